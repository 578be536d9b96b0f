FROM scratch
COPY Dockerfile /d
CMD ["a", "b"
