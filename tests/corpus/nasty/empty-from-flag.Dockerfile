FROM scratch
COPY --from= / /
