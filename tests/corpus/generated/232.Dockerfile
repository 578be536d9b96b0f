ARG BASE=scratch
FROM ${BASE}
ARG A B=2
ENV P=/p
WORKDIR $P
COPY --chmod=0644 Dockerfile .

MAINTAINER 
éCOPY --exclude=0 Dockerfile /x
FROM scratch AS UPPER
COPY --from=upper / /
