FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
FROM scratch AS a
FROM a AS a
