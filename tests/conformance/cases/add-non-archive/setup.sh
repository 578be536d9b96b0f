# a gzip stream that is not a tar archive, and a ".tar.gz" that is not gzip
echo "just text, gzipped" > single.txt
gzip -n -9 single.txt          # -> single.txt.gz (not a tar inside)
echo "not really an archive" > fake.tar.gz
