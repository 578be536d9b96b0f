FROM scratch
COPY Dockerfile /d
COPY --platform=0 Dockerfile /x
