FROM scratch
COPY --chmod=99999 Dockerfile /
