FROM scratch AS one
COPY Dockerfile /one
FROM scratch
COPY =one /one /two
CMD ["/two"]
