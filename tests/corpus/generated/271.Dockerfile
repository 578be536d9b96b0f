FROM scratch
COPY Dockerfile /d

ONBUILD }"COPY <<EOF <<EOF2 /x
EOF
