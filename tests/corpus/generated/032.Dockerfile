FROM scratch
HEALTHCHECK --interval=5s --timeout=3s CMD ["/check"]
ONBUILD COPY . /
FROM missing-stage-zz AS z
COPY --from=nowhere /a /b
