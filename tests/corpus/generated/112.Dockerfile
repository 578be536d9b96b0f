FROM scratch
COPY greeting
hello ${NAME:-world}
EOF
