FROM scratch
ONBUILD FROM scratch
