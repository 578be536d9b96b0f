FROM scratch
WORKDIR /a
WORKDIR b
WORKDIR ../c
COPY ["Dockerfile", "/q/"]
ENV Z=${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x}}}}}}}}}}}}}}}}}}}}}}}}}}}}}
