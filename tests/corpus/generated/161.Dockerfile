FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
MAINTAINER $",<<-EOF
--mount=type=bogus${A99999999999999999999
FORM \--chown=99999999999999 999999COPY
SHELL ["/bin/sh", "-c"]
