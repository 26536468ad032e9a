#!/usr/bin/env bash
# Runs signer, index and gateway on this machine with defaults that just
# work. Ctrl-C stops all three. Configure with the NIXCACHE_* variables that
# each service documents in `bin/nixcache-<service> -h`; these are the ones
# this script sets unless you already did:
#
#   NIXCACHE_DATA_DIR   ./data   where keys, catalogue, NARs, tokens and the
#                                signer's and the index's gRPC sockets live
#                                (mode 0700: no other user of the host can
#                                reach the services, nor get a signature)
#   NIXCACHE_KEY_NAME   <hostname>-1   name of the key made on first start
#   NIXCACHE_LISTEN_HTTP 127.0.0.1:5000   the gateway's address
set -euo pipefail
cd "$(dirname "$0")/.."

data=${NIXCACHE_DATA_DIR:-$PWD/data}
key_name=${NIXCACHE_KEY_NAME:-$(hostname)-1}
http=${NIXCACHE_LISTEN_HTTP:-127.0.0.1:5000}
export NIXCACHE_LOG_FORMAT=${NIXCACHE_LOG_FORMAT:-text}
unset NIXCACHE_DATA_DIR NIXCACHE_LISTEN NIXCACHE_SIGNER_ADDR NIXCACHE_INDEX_ADDR # each service gets its own below

mkdir -p "$data/signer" "$data/index/nars" "$data/gateway"
chmod 700 "$data" "$data/signer"
signer_sock=unix:$data/signer.sock
index_sock=unix:$data/index.sock

auth=$data/gateway/auth
if [ ! -f "$auth" ]; then
  token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  umask 077
  printf '# name  scopes          token\nlocal   read,push,admin %s\n' "$token" > "$auth"
  echo "nixcache: made a push token in $auth" >&2
fi
token=$(awk '$1 == "local" { print $3 }' "$auth")

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait
}
trap stop INT TERM EXIT

bin/nixcache-signer -listen "$signer_sock" -key-files "$data/signer/secret.key" -generate-key "$key_name" \
  -key-dir "$data/signer/keys" & pids+=($!)
for _ in $(seq 100); do # the signer writes the public key on first start
  [ -f "$data/signer/secret.key.pub" ] && break
  sleep 0.1
done
pub=$(cat "$data/signer/secret.key.pub" 2>/dev/null || echo "<see the signer's log above>")
# The index checks the push scope of every write itself (the token file is
# the gateway's), so a gateway taken over cannot publish without a token.
# The three run as one user here, so the gateway writes pushed NARs into
# files the index hands it (-upload-spool auto; docs/configure.md, "Spooled uploads").
bin/nixcache-index -listen "$index_sock" -signer-addr "$signer_sock" -data-dir "$data/index" -auth-file "$auth" \
  -upload-spool auto & pids+=($!)
# Co-located: the gateway sends the index's NAR files itself (docs/configure.md, "Co-located gateway"), and
# with NIXCACHE_LOCAL_STORE=true dumps the host store's NARs itself too.
local_store=()
if [ "${NIXCACHE_LOCAL_STORE:-false}" = true ]; then
  local_store=(-local-store-dir "${NIXCACHE_STORE_DIR:-/nix/store}")
fi
bin/nixcache-gateway -listen "$http" -index-addr "$index_sock" -auth-file "$auth" -nar-dir "$data/index/nars" "${local_store[@]}" & pids+=($!)

cat >&2 <<MSG

nixcache is starting on http://$http (data in $data).
  public key:  $pub
  push:        nix copy --to 'http://$http?compression=zstd' PATH
               with a netrc file holding: machine ${http%:*} login nixcache password $token
  clients:     substituters = http://$http
               trusted-public-keys = $pub
Ctrl-C stops all three.

MSG

# Stop everything as soon as one service exits (or on Ctrl-C).
wait -n || true
echo "nixcache: stopping" >&2
