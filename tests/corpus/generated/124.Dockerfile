FROM scratch

hello ${NAME:-world}
EOF
COPY <<EOF /greetingADD --link Dockerfile /x
FROM scratch AS 9bad
