ENV \99999999999999999999${${A//x/
FROM scratch
COPY Dockerfile /d
COPY <<EOF /x
no end
