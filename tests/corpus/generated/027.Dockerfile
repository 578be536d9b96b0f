FROM scraRUNtch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
