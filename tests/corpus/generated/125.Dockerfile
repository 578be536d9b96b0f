
# escape=`
ARG BASE=scratch
FROM ${BASE}
ARG A B=2
ENV P=/p
WORKDIR $P
COPY --chmod=0644 Dockerfile .
