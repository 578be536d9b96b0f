FROM scratch
COPY Dockerfil<<EOFe /d\


