USER 1000:1000
EXPOSE 80/tcp 443
VOLUME ["/data"]
FROM scratch
STOPSIGNAL SIGTERM
FROM scratch AS UPPER
COPY --from=upper / /
