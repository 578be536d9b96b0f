FROM scratch AS a
from ${A/",
ARG V=1
ENV X=$V Y=${V:-2}
LAB\
EL k="v w"
WORKDIR /w/$V
COPY Dockerfile ./
