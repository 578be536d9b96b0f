FROM scratchCOPY Dockerfile /dCOPY --from=${X Dockerfile /x
FROM missing-stage-zz AS z
COPY --from=nowhere /a /b
