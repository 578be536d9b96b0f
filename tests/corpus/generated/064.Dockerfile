ARG V=1
FROM scratch AS a
ENV X=$V Y=${V:-2}
LABEL k="v w"
W