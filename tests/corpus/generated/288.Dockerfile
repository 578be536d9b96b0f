COPY Dockerfile /d
FROM scratch
ADD --keep-git-dir Dockerfile /x
