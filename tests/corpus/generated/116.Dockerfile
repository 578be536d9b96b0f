# escape=`
FROM scratch
ENV A[31m=a`
    B=b
COPY 