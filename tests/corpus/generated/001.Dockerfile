FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
FROM scratch AS UPPER
COPY --from=upper / /
ENV Z=${A:-${A:-${A:-x}}
