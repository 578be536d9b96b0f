FROM scratch AS one
COPY Dockerfile /one
FROM scratch
COONBUILD ONBUILDPY --from=one /one /two
CMD ["/two"]
FROM scratch AS x
COPY --from=x / /
