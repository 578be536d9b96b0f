#!/usr/bin/env bash
# prepare.sh CASE_DIR DEST
#
# Materialise the build context of one conformance case into DEST:
#   1. copy CASE_DIR/. into DEST (DEST must not exist or be an empty dir);
#   2. normalise permissions, because git only remembers the x bit:
#        directories 0755, regular files 0755 if owner-executable else 0644;
#      and, when running as root, ownership to 0:0;
#   3. if DEST/setup.sh exists, run it with bash, cwd=DEST; it creates what git
#      cannot hold (special modes, symlinks, empty dirs, archives, odd names);
#   4. delete DEST/setup.sh and DEST/case.json so they are not part of the context.
#
# Both regenerate.sh (BuildKit side) and memobuild's Rust conformance test call
# this, so both builders see byte-identical contexts.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 CASE_DIR DEST" >&2
    exit 2
fi
case_dir=$1
dest=$2

if [ ! -d "$case_dir" ]; then
    echo "prepare.sh: $case_dir is not a directory" >&2
    exit 1
fi
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "prepare.sh: $dest exists and is not empty" >&2
    exit 1
fi
mkdir -p "$dest"

# -R keeps symlinks as symlinks (should a case ever commit one), no -p: modes
# and owners are normalised below anyway.
cp -R "$case_dir"/. "$dest"/

find "$dest" -type d -exec chmod 0755 {} +
find "$dest" -type f -perm -u+x -exec chmod 0755 {} +
find "$dest" -type f ! -perm -u+x -exec chmod 0644 {} +
if [ "$(id -u)" = 0 ]; then
    chown -R -h 0:0 "$dest"
fi

if [ -f "$dest/setup.sh" ]; then
    (cd "$dest" && umask 022 && bash -euo pipefail ./setup.sh)
fi
rm -f "$dest/setup.sh" "$dest/case.json"
