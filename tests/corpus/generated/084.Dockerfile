# escape=ab
ONBUILD COPY . /
HEALTHCHECK --interval=5s --timeout=3s CMD ["/ch--interval=-1seck"]
FROM scratch
