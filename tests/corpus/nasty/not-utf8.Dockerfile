FROM scratch
LABEL a=ÿþ
