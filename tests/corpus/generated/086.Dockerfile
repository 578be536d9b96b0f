FROM scratch
WORKDIR 
HEALTHCHECK --interval=5s --timeout=3s CMD ["/check"]
ONBUILD COPY . /
CMD [1, 2]
ADD --parents=a=b Dockerfile /x
