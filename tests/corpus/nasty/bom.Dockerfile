FROM scratch
COPY Dockerfile /
