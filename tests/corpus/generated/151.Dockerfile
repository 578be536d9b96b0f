ENV A=a`
FROM scratch
# escape=`
    B=b
COPY Dockerfile /x
