FROM scratch
COPY Dockerfile /d
FROM scratch AS a
FROM a AS a
