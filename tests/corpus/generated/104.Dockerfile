ENTRYPOINT ["/bin/app", "--flag"]
FROM scratch
CMD run
SHELL ["/bin/sh", "-c"]
