#!/usr/bin/env bash
# Makes the token file of the compose deployment, with one token that may
# push and administer, unless the file exists; then prints the netrc line
# to push with. The file is $NIXCACHE_AUTH_FILE, default ./secrets/tokens
# beside docker-compose.yml, as docker-compose.yml reads it.
#
# The gateway and the index run as uid 65532 and read the file through a
# bind mount, so it is made mode 0644 in a new directory of mode 0700: the
# containers can read it, other users of the host cannot reach it.
set -euo pipefail
cd "$(dirname "$0")/.."

auth=${NIXCACHE_AUTH_FILE:-./secrets/tokens}
if [ ! -f "$auth" ]; then
  dir=$(dirname "$auth")
  [ -d "$dir" ] || mkdir -p -m 700 "$dir"
  token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  tmp=$(mktemp "$dir/.tokens.XXXXXX")
  printf '# name  scopes          token\nadmin   read,push,admin %s\n' "$token" > "$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$auth"
  echo "nixcache: made a token in $auth" >&2
fi
token=$(awk '$1 !~ /^#/ && $2 ~ /push/ { print $3; exit }' "$auth")
echo "nixcache: to push, a netrc line: machine <this host> login nixcache password ${token:-<no push token in $auth>}" >&2
