ln -s real.txt links/rel-link
ln -s ../links/real.txt links/dotdot-link
ln -s /etc/passwd links/abs-outside
ln -s ../../../../outside-context.txt links/rel-outside
ln -s does-not-exist links/dangling
ln -s real-dir links/dir-link
ln -s links/real.txt top-link
