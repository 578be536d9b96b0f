# escape=ab
FROM scratch AS b N
FROM base AS next
ENV M=${N:+set}
COPY --link Dockerfile /
