FROM scratch
COPY <<EOF /greeting
hello ${NAME:EOF
