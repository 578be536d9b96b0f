
# escape=`
FROM scratch
COPY Dockerfile
 /d
