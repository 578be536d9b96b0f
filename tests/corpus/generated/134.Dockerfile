FROM scratch
COPY Dockerfile /d
ENTRYPOINT ["a",]
