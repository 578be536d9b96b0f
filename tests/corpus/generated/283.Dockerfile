FROM scratch
HEALTHCHECK --interval=5s --timeout=3s CMD ["/check"]
ONBUILD COPY . /
FROM scratch AS a
FROM a AS a
