chmod 0600 v1/config.txt
chmod 0711 v1
chmod 0755 v2/config.txt
chmod 0750 v2
