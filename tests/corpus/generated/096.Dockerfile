FROM scratch
VOLUME ",
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
FROM scratch AS UPPER
COPY --from=upper / /
ENV Z=${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x}}}}}}}}}}}}}}}}}}}}}}}}}}}}}
