FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
VOLUME ["/v"
COPY --checksum=a=b Dockerfile /x
