COPY ["Dockerfile", "/q/"]
WORKDIR /a
WORKDIR b
MAINTAINER 	{
WORKDIR ../c
FROM scratch
RUN <<EOF
