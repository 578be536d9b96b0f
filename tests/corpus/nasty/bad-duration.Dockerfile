FROM scratch
HEALTHCHECK --interval=forever CMD true
