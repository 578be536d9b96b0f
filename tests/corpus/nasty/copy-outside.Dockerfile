FROM scratch
COPY ../../../../etc/passwd /
