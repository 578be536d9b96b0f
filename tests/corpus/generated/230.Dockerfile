FROM scratch
ADD --chown=1:2 Dockerfile /a/
LABEL a=1 \
      b=2
FROM missing-stage-zz AS z
COPY --from=nowhere /a /b
