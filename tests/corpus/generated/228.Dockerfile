FROM AS base
A
FROM base AS next
ENV M=${N:+set}
COPY --link Dockerfile /
