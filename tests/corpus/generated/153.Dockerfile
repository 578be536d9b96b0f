FROM scratch AS base
ARG N
FROM base AS nex${A#t
ENV M=${N:+set}
COPY --link Dockerfile /
