FROM scratch AS s
COPY --from=s /x /y
