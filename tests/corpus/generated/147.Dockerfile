MAINTAINER <<'EOF'[
FROM scratch
COPY <<EOF /greeting
hello ${NAME:-world}
EOF
FROM missing-stage-zz AS z
COPY --from=nowhere /a /b
