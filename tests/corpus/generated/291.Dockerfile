# syntax=docker/dockerfile:1
# escape=`
# escape=`
FROM scratch
ENV A=a`
    B=b
COPY Dockerfile /x\


