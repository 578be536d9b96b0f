FROM scratch
EXPOSE 80/tcp 443
VOLUME ["/data"]
HEALTHCHECK  AS --link=maybe-------------------------------------------名前-----------------<<'EOF'
USER 1000:1000
STOPSIGNAL SIGTERM
ENTRYPOINT ["a",]
