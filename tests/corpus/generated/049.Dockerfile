FROM scratch
ENTRYPOIN/app", "--flag"]
CMD run
SHELL ["/bin/sh", "-c"]
COPY <<"E F" /x
E F
