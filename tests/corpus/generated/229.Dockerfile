ARG BASE=scratch
FROM ${BASE}
ARG A B=2
SHELL ${\
#
ENV P=/p
WORKDIR $${A/P
COPY --chmod=0644 Dockerfile .
