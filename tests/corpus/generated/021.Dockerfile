# escape=ab
FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
SHELL ["/bin/sh", "-c"]
FROM --exclude Dockerfile /x
