FROM scratch
ONBUILD COPY . /
HEALTHCHECK --interval=5s --timeout=3s CMD ["/check"]
