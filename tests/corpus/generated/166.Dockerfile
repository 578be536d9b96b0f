FROM scratch
EXPOSE 80/tcp 443
VOLUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGTERM
ENT<<EOFRYPOINT ["a",]
ENV Z=${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x
