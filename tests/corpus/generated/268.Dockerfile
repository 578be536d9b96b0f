      b=2
ADD --chown=1:2 Dockerfile/a/
LABEL a=1 \
FROM scratch
