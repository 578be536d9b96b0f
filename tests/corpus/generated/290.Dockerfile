# escape=`
FROM scratch
ENV A=a`
    Y Dockerfile /x
CMD ["a`", "b"
