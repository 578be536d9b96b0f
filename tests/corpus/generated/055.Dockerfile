FROM scratch
ADD --chown=1:2 Dockerfile /a/
