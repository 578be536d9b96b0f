FROM scratch
ADD --chown=1:2 Dockerfile /a/

      b=2
SHELL []
LABEL a=1 \