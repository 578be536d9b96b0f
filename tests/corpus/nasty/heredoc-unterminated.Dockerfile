FROM scratch
COPY <<EOF /x
no terminator
