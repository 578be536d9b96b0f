FROM scratch
COPY Dockerfile /d
COPY <<EOF /x
no end
