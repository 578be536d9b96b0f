FROM scratch
COPY Dockerfile /d
VOLUME ["/v"\


