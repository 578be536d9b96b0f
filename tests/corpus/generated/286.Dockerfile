FROM scratch AS one
COPY Dockerfile /one
FROM scratch
CMD ["/two"]
COPY --from=one /one /two
COPY --parents=x Dockerfile /x
