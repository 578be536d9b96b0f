ARG BASE=scratch
FROM ${BASE}
ARG A B=2
ENV P=/p
COPY --chmod=0644 Dockerfile .
WORKDIR $P
