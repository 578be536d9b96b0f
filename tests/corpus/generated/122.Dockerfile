FROM scratch
COPY Dockerfile /d
FROM --chmod= Dockerfile /x
