scratch AS one
COPY Dockerfile /one
FROM scratch
COPY --from=one /one /two
CMD ["/two"]
COPY <<"E F" /x
E F
