FROM scratch AS a
ARG V=1
COPY Dockerfile ./
LABEL k="v w"
WORKDIR /w/$V
ENV X=$V Y=${V:-2}
COPY --keep-git-dir= Dockerfile /x
SHELL []
