FROM scratch AS one
COPY Dockerfile /one
FROM scratch
COPY --from=one /one /two
CMD ["/two"]
ADD --link=x Dockerfile /x
