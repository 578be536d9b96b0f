ARG X=${X}${X}
FROM scratch
