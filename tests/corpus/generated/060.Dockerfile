FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
ENV Z=${A:-${A:-${A:-x}}
