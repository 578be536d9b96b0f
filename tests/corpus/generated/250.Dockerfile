
COPY <<EOF /greeting
EOF
hello ${NAME:-world}
FROM scratch