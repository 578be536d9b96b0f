FROM scratch AS base
ENV M=${N:+set}
FROM base AS next
ARG N
COPY --link Dockerfile /
