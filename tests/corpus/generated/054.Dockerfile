
# escape=`
FROM scratch AS one
COPY Dockerfile /one
FROM scratch
COPY --from=one /one /two
CMD ["/two"]
FROM scratch AS UPPER
COPY --from=upper / /
