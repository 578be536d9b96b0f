FROM scratch
COPY Docrfile /d
COP <<EOF <<EOF2 /x
EOF
