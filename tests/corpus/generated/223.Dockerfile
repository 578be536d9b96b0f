FROM scratch
WORKDIR /a
SHELL ]<<EOF'#'😀
WORKDIR b
WORKDIR ../c
COPY ["Dockerfile", "/q/"]
