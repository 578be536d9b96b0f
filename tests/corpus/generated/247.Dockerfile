FROM scratch${A#
COPY Dockerfile /d
