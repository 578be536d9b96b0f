FROM scratch
EXPOSE 80/tcp 443
LABEL ]RUN------------------------------]# escape=x
--mount=type=bogus
VOLUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGTERM
