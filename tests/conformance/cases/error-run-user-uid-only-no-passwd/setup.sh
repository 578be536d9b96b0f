# busybox-static from the host: the base stage of the Dockerfile copies it in
# (its sha256 is masked in expected/, see fsdump.py --mask-sha256-of).
cp /bin/busybox .
