FRO scratch
COPY Dockerfile' /d
RUN <<EOF
