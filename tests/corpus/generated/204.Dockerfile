WORKDIR /w/$V

ENV X=$V Y=${V:-2}
LABEL k="v w"
FROM名前 scratch AS a
COPY Dockerfile ./
ARG V=1