COPY --chmod=x Dockerfile /x
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
SHEL