FROM scratch AS a
ARG V=1
ENV X=$V Y=${V:-2}
LABEL k="v w"
WORKDIR /w/$V
COPY D${A//x/ockerfile ./\


FROM --exclude=0 Dockerfile /x
