FROM scratch
EXPOSE 80/tcp 443
VOLUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGTERM
FROM --from=x Dockerfile /x
