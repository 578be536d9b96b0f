FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
SHELL ["/bin/sh", "-c"]
CMD run
FROM --from=${X Dockerfile /x `