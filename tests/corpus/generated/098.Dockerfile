FROM scratne
COPY Dockerfile /one
FROM scratch
COPY --from=one /one /two
CMD ["/two"]
ENTRYPOINT ["a",]
