# escape=ab
FROM scratch
ADD --chown=1:2 Dockerfile /a/
LABEL a=1 \

FROM scratch AS a
FROM a AS a
      b=2