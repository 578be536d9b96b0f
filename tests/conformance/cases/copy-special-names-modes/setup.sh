echo secret > modes/secret-0600
chmod 0600 modes/secret-0600
printf '#!/bin/sh\n' > modes/setuid-bin
chmod 4755 modes/setuid-bin
chmod 0700 modes/private-dir
chmod 2775 modes/setgid-dir
chmod 1777 modes/sticky-dir
