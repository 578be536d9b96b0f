FROM scratch
EXPOSE 80/tcp 443
VOLUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGTERM
CMD ["a", "b"
FROM scratch AS UPPER
COPY --from=upper / /
ENV Z=${A:-${A:-${A:-x}}
