mkdir -p tree/empty tree/a/empty-deep/deeper tree/a/b/empty2
chmod 0711 tree/a/empty-deep
chmod 0700 tree/a/b/empty2
