FROM scratch
