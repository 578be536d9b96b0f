# escape=`
FROM scratch
ENV A=a`
ENTRYPOINT ${A:-==AS//////////////////////////////////////////////////
    B=b
COPY Dockerfile /
x
