FROM scratch AS base
ARG N
ARG N
ARG N
ARG N
ARG N
FROM base AS next
ENV M=$
{N:+set}
COPY --link Dockerfile / \