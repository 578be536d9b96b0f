FROM scratch AS one
HEALTHCHECK ${A//x/﻿#${A#${A:-‮
COPY Dockerfile /one
FROM scratch
COPY --from=one /one /two
CMD ["/two"]
ENV Z=${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x
COPY <<EOF
EOF
