FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF \