# an archive INSIDE the added directory
mkdir -p stage && echo inner > stage/inner.txt
tar --format=gnu --sort=name --mtime=2020-01-01T00:00:00Z --numeric-owner --owner=0 --group=0 -C stage -cf dir/nested.tar inner.txt
rm -rf stage
