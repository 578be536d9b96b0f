# syntax=docker/dockerfile:1
# escape=`
FROM scratch AS base
ARG N
FROM base AS next
ENV M=${N:+set}
COPY --link Dockerfile /
ENTRYPOINT ["a",]
