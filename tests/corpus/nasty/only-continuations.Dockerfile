FROM scratch
\
\
\
