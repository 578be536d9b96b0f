FROM scratch
WORKDIR /a

WIR ../c
COPY ["Dockerfile", "/q/"]\
WORKDIR b

