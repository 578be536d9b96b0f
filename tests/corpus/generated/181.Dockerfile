FROM scratch
WORKDIR /a
WORKDIR b
WORKDIR ../c
COPY ["Dockerfile", "/q/"]
FROM missing-stage-zz AS z
COPY --from=nowhere /a /b
