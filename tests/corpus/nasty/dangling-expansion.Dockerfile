FROM scratch
ENV A=${
