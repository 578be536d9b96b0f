FROM scratch
COFRUN /greeting
hello ${NAME:-world}
EOF
SHELL []
