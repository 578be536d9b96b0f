FROM scratch
ADD http://[::1 /x
