# escape=`
FROM scratch
ENV A=a`
    B=b
COPY Dockerfile /x\


=ENV Z=${A:-${A:-${A:-x}}
