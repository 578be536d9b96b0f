FROM scratch
COPY Dockerfile /d
VOLUME ["/v"
ADD --platform Dockerfile /x
