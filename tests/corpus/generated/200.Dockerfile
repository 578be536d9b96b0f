FROM scratch
COPY Dockerfile /d
COPY ["Dockerfile" "/x"]
