FROM scratch
HEALTHCHECK --interval=5s --timeout=3s CMD ["/check"]
ONBUILD--link=maybe COPY .  AS /
COPY ["Dockerfile" "/x"]
