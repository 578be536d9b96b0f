FROM scratch
COPY D