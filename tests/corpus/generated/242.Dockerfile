FROM scratch AS a
ARG V=1
ENV X=$V Y=${V:-2}
LABEL k="v w"
WORKDIR /w/$V
COPY Dockerfile ./ \
\
