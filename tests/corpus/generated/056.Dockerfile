FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
SHELL ["/bin/sh", "-c"]
FROM scratch AS x
COPY --from=x / /
ENV Z=${A:-${A:-${A:-x}}}
