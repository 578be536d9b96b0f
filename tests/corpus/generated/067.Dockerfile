FROM scratch
WORKDIR /a
WORKDIR b
WORKDIR ../c
COPY ["Dockerfile", "/q/"]\


