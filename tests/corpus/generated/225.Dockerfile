#escape=\\
--interval=-1sFROM scratch
ENTRYPOINT ["/bin/ap