FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
SHELL ["/bin/sh", "-c"]
ADD --keep-git-dir Dockerfile /x
COPY <<"E F" /x
E F
