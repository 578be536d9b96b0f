# Build deterministic archives (GNU tar, fixed owners/mtime, sorted names) from
# a staging tree, then remove the staging tree from the context.
mkdir -p stage/pkg/bin stage/pkg/empty stage/pkg/etc
echo "hello from the archive" > stage/pkg/readme.txt
printf '#!/bin/sh\necho run\n' > stage/pkg/bin/run.sh
echo "conf" > stage/pkg/etc/app.conf
ln -s ../readme.txt stage/pkg/bin/readme-link
ln stage/pkg/readme.txt stage/pkg/hardlink.txt
chmod 0750 stage stage/pkg/empty
chmod 0755 stage/pkg stage/pkg/bin stage/pkg/etc
chmod 4755 stage/pkg/bin/run.sh
chmod 0640 stage/pkg/etc/app.conf
chmod 0644 stage/pkg/readme.txt
echo "root owned, appended" > stage-extra.txt
chmod 0600 stage-extra.txt
common=(--format=gnu --sort=name --mtime=2020-01-01T00:00:00Z --numeric-owner)
# "./" root entry included on purpose (mode 0750, owner 1234:5678)
tar "${common[@]}" --owner=1234 --group=5678 -C stage -cf plain.tar .
tar "${common[@]}" --owner=0 --group=0 --transform='s|^stage-extra.txt$|extra/root-owned.txt|' -rf plain.tar stage-extra.txt
gzip -n -9 -c plain.tar > archive.tar.gz
bzip2 -9 -c plain.tar > archive.tar.bz2
xz -9 -c plain.tar > archive.tar.xz
# archive without a "./" entry, to a destination without trailing slash
tar "${common[@]}" --owner=7 --group=8 -C stage -cf noroot.tar pkg/readme.txt pkg/etc
rm -rf stage stage-extra.txt
