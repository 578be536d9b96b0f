FROM scratch AS one
COPY Dockerfile /one
FROM scratch
COPY --from0000000000000000000000000000000000000000=one /one /two
CMD ["/two"]
