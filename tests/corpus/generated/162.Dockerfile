FROM scratch
HEALTHCRUNHECK --interval=5s --timeout=3s CMD ["/check"]
ONBUILD COPY . /
COPY <<EOF /x
no end
COPY <<"E F" /x
E F
