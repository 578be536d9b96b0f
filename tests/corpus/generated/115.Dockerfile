FROM scratch
WORKDIR /a
WORKDIR b
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
LABEL 
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
WORKDIR ../c
COPY ["Dockerfile", "/q/"]
