FROM scratch
ENTRYPOINT ["/bin/app", "--flag"]
CMD run
SHELL ["/bin/sh", "-c"]
SHELL []
ENTRYPOINT ["a",]
CMD [1, 2]
