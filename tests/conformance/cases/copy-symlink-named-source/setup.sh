ln -s real.txt file-link
ln -s real-dir dir-link
