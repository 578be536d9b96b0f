chmod 0700 tree/private
