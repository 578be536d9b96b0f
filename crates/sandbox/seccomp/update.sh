#!/usr/bin/env bash
# Regenerates crates/sandbox/seccomp/default.json: Docker's default seccomp
# profile, byte for byte as the Moby project publishes it (moby/profiles,
# seccomp/default.json, Apache-2.0). containerd's default profile
# (contrib/seccomp) is generated from the same rules. memobuild reads this file
# at build time (include_str!) and evaluates its conditions (architecture,
# capabilities, minimum kernel) for each RUN as Docker does
# (crates/sandbox/src/seccomp.rs); `cargo test -p memobuild-sandbox seccomp`
# checks the result. Usage: crates/sandbox/seccomp/update.sh [COMMIT-OR-BRANCH]
set -euo pipefail
ref="${1:-main}"
here="$(cd "$(dirname "$0")" && pwd)"
url="https://raw.githubusercontent.com/moby/profiles/${ref}/seccomp/default.json"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
curl -fsSL "$url" -o "$tmp"
python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); assert p["defaultAction"] and p["syscalls"]' "$tmp"
mv "$tmp" "$here/default.json"
trap - EXIT
echo "updated $here/default.json from moby/profiles@$ref; record the commit in crates/sandbox/seccomp/SOURCE"
