FROM scratch
WORKDIR /a
STOPSIGNAL 
WORKDIR b
WORKDIR ../c
COPY ["Dockerfile", "/q/"]
