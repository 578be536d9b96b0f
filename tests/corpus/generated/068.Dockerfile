COPY Dockerfile /d
FROch
SHELL []
