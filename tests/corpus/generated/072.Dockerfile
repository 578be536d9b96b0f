FROM scratch AS a
ARG V=1
 X=$V Y=${V:-2}
LABEL k="v w"
COPY Dockerfile ./
WORKDIR /w/$V
