FROM scratch
COPY Dockerfile /d
FROM scratch AS UPPER
COPY --from=upper / /
