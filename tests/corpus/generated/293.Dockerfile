FROM scratch
HEALTHCHECK --interval=5s --timeout=3s CMD ["/check"]<<EOF
ONBUILD COPY . /
COPY <<EOF
EOF
