FROM scratch
ADD --chown=1:2 Dockerfile /a/
LABEL a=1 \
      b=2
