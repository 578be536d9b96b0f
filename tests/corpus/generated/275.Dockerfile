FROM sCOPY <<EOF /greetin",g
hello ${NAME:-world}
EOF
CMD [1, 2]
