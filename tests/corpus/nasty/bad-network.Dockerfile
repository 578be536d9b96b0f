FROM scratch
RUN --network=moon true
