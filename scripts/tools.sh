#!/usr/bin/env bash
# Installs what building, running and testing nixcache need, skipping what
# is already there: Debian packages (Nix 2.8 and friends) and pinned Go tools
# (into .tools/bin). Safe to run again.
#
#   scripts/tools.sh            everything the tests need
#   scripts/tools.sh --run      only what running the cache needs
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned Go tools. Changing a version here is the only way to upgrade one.
GO_TOOLS=(
  github.com/bufbuild/buf/cmd/buf@v1.75.0
  google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@v2.33.0
  github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
  # make lint (.golangci.yml)
  github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
  # e2e/s3_test.go: the S3 server of the bucket backend's tests; static
  # (CGO_ENABLED=0) so that docker/s3.yml can put it in a scratch image.
  github.com/versity/versitygw/cmd/versitygw@v1.8.0
)

mode=${1:-test}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_packages=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || apt_packages+=("$2")
}
need nix-store nix-bin
need curl curl
need openssl openssl # scripts/gen-certs.sh: certificates for mutual TLS (e2e/mtls_test.go)
need make make
if [ "$mode" != --run ]; then
  need xz xz-utils
  need zstd zstd
  need bzip2 bzip2
  need nginx nginx # bench/: the static-cache baseline of `make bench` and `make bench-smoke`; e2e/upstream_test.go: the upstream cache
  need python3 python3 # bench/workload/gen-closure.py
  need chromium chromium # e2e/landing_test.go: the landing page in a headless browser
  need docker-compose docker-compose # e2e/compose_test.go (the Docker engine itself comes with the machine)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "tools: installing Debian packages: ${apt_packages[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

[ "$mode" = --run ] && exit 0

bin=$PWD/.tools/bin
mkdir -p "$bin" .tools/stamps
for tool in "${GO_TOOLS[@]}"; do
  stamp=.tools/stamps/$(echo "$tool" | tr '/@' '__')
  name=$(basename "${tool%@*}")
  if [ -f "$stamp" ] && [ -x "$bin/$name" ]; then continue; fi
  echo "tools: go install $tool" >&2
  GOBIN=$bin GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 go install "$tool"
  touch "$stamp"
done
