COPY Dockerfile ./
ARG V=1
ENV X=$V Y=${V:-2}
LABEL k="v w"
WORKDIR /w/$V
FROM scratch AS a
