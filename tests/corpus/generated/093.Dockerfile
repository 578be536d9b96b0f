FROM scratch AS one
COPY Dockerfile /one
FROM scratch
COPY --from=one /one /two
CMD ["/two"]
STOPSIGNAL --interval=-1sRUN[31m--platform=
ENV Z=${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}
FROM scratch AS x
COPY --from=x / /
