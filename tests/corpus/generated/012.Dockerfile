FROM scratch AS one
COPY Dockerfile /one
FROM scratch
COPY --from=one /one /two
CMD ["/two"]
FROM scratch AS x
COPY --from=x / /
CMD ["a", "b"
