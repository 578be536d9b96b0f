ARG BASE=scratch
FROM ${BASE}
ARG A B=2<<-EOF

ENV P=/p
WORKDIR $P
COPY --chmod=0644 Dockerfile .
