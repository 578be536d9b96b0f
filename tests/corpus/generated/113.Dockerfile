FROM scratch
EXPOSE 80/tcp 443
VOL--interval=-1sUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGTERM
COPY --bogus=x Dockerfile /x
