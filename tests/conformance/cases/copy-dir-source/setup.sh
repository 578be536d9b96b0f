chmod 0700 src
chmod 0750 src/sub
