#!/usr/bin/env bash
# Makes the S3 credentials of the compose deployment with the bucket
# backend (docker/s3.yml), unless the file exists: one random key pair,
# as the S3 server takes it (ROOT_*) and as the index does (AWS_*). The
# file is $NIXCACHE_S3_ENV_FILE, default ./secrets/s3.env beside
# docker-compose.yml; compose reads it (env_file), the containers get the
# variables, so it is made mode 0600 in a directory of mode 0700.
set -euo pipefail
cd "$(dirname "$0")/.."

env_file=${NIXCACHE_S3_ENV_FILE:-./secrets/s3.env}
if [ ! -f "$env_file" ]; then
  dir=$(dirname "$env_file")
  [ -d "$dir" ] || mkdir -p -m 700 "$dir"
  access=nixcache$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
  secret=$(head -c 30 /dev/urandom | od -An -tx1 | tr -d ' \n')
  tmp=$(mktemp "$dir/.s3.env.XXXXXX")
  printf 'ROOT_ACCESS_KEY_ID=%s\nROOT_SECRET_ACCESS_KEY=%s\nAWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
    "$access" "$secret" "$access" "$secret" > "$tmp"
  chmod 600 "$tmp"
  mv "$tmp" "$env_file"
  echo "nixcache: made S3 credentials in $env_file" >&2
fi
