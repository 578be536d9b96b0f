FROM scratch
HEALTHCHECK --interval=5s --timeout=3s CMD ["/check"]
ONBUILD COPY . /\


ENTRYPOINT [