FROM scratchHEALTHCHECK --interval=5s --timeout=3s CMD ["/cheUILD COPY . /ADD --keep-git-dir=-1 Dockerfile /x
