# escape=`
FROM scratch
ENV A=a`
    B=b
COPY Dockerfile /x
FROM scratch AS a
FROM a AS a
FORM [\
--chown=
