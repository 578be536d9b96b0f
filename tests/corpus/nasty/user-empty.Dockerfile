FROM scratch
USER
