FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
COPY ["Dockerfile" "/x"]
COPY <<EOF <<EOF2 /x
EOF
