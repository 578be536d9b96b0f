# syntax=docker/dockerfile:1
# escape=`
FROM scratch AS base
ARG N
FROM bFROM scratch AS x
COPY --from=x / /
