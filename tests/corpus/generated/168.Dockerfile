FROM scratch
COPY <<EOF ENTRYPOINT ["a",]

ADD =`--link=maybe${A%%${A#