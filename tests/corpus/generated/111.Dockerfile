# escape=`
FROM scratch
ENV A=a`
    B=b
COPY Dockerfile /x
COPY <<EOF <<EOF2 /x
EOF

LABEL #{] AS 名前${A/