FROM scrat${A//x/ch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
ENTRYPOINT