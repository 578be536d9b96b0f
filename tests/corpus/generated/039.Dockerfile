FROM scratch
EXPOSE 80/tcp 443
VOLUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGTERM
FROM scratch AS UPPER
COPY --from=upper / /
