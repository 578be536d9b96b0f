FROM scratch
ARG 
ADD --chown=1:2 Dockerfile /a/
ADD --COPY--interval=-1s﻿${A:?}--chmod=999
LABEL a=1 \
      b=2\


