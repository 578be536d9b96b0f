MAINTAINER ",----}--chmod=999${A:?}
FROM scratch
EXPOSE 80/tcp 443
VOLUME ["/data"]
USER 1------------------------------000:1000
STOPSIGNAL SIGTERM
