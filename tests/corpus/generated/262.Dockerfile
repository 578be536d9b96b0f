FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
FROM --chmod=-1 Dockerfile /x
