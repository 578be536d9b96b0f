FROM scratch
COPY Dockerfile /d
