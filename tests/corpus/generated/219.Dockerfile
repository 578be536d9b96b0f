FROM scratch
COPY Dockerfile /d
ENTRYPOINT ["a",]
COPY <<"E F" /x
E F
