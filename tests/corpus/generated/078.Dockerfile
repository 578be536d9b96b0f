FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
COPY --bogus=-1 Dockerfile /x
