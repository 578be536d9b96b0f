FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
SHELL ["/bin/sh", "-c"]
ADD --network Dockerfile /<<-EOF
x
ENV Z=${A:-${A:-${A:-x
