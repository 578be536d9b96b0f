# syntax=docker/dockerfile:1
# escape=`
FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
