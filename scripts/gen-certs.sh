#!/usr/bin/env bash
# Makes a private CA and one certificate per service for mutual TLS between
# the nixcache services (docs/deploy.md: "Mutual TLS between the services").
#
#   scripts/gen-certs.sh DIR [SAN...]
#
# writes into DIR (made mode 0700):
#   ca.pem, ca.key                      the CA (keep ca.key off the servers)
#   signer.pem/.key, index.pem/.key,    one certificate per service, usable
#   gateway.pem/.key                    as server and as client certificate
#
# Each certificate names DNS:<service>, DNS:localhost, IP:127.0.0.1 and
# IP:::1, plus every SAN given (e.g. DNS:cache-internal.example.org
# IP:10.0.0.5): a client checks that the server's certificate names the
# host of the address it calls (-index-addr, -signer-addr). An existing
# CA in DIR is reused; existing certificates are kept (delete them to
# renew). Keys are EC P-256, certificates valid 825 days (the CA 10 years).
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
dir=$1
shift
for san in "$@"; do
  case $san in
    DNS:?*|IP:?*) ;;
    *) echo "gen-certs: SAN $san: want DNS:<name> or IP:<address>" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "gen-certs: openssl is required" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
umask 077

if [ ! -f ca.key ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=nixcache services CA" \
    -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem
  chmod 644 ca.pem
  echo "gen-certs: made the CA $dir/ca.pem" >&2
fi

for service in signer index gateway; do
  if [ -f "$service.pem" ]; then
    echo "gen-certs: keeping $dir/$service.pem" >&2
    continue
  fi
  sans="DNS:$service,DNS:localhost,IP:127.0.0.1,IP:::1"
  for san in "$@"; do sans="$sans,$san"; done
  openssl ecparam -name prime256v1 -genkey -noout -out "$service.key.tmp"
  # PKCS#8, as Go and grpcurl read it.
  openssl pkcs8 -topk8 -nocrypt -in "$service.key.tmp" -out "$service.key"
  rm -f "$service.key.tmp"
  openssl req -new -key "$service.key" -subj "/CN=nixcache-$service" -out "$service.csr"
  printf '%s\n' "basicConstraints=critical,CA:false" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$sans" > "$service.ext"
  openssl x509 -req -in "$service.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 825 \
    -extfile "$service.ext" -out "$service.pem" 2>/dev/null
  rm -f "$service.csr" "$service.ext"
  chmod 644 "$service.pem"
  echo "gen-certs: made $dir/$service.pem ($sans)" >&2
done
rm -f ca.srl
