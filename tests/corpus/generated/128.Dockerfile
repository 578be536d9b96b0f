FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
SHELL ["/bin/sh", "-c"]
SHELL []
COPY <<EOF <<EOF2 /x
EOF
