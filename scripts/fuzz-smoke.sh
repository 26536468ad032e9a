#!/usr/bin/env bash
# Runs every `go test -fuzz` target in the repository for FUZZTIME each
# (one package and one target per run). Go 1.26's fuzz coordinator can
# report a bare "context deadline exceeded" as the -fuzztime deadline
# fires (go.dev/issue/75804, fixed in Go 1.27): such a run, with no
# failing input written and no panic, is run once more; any other failure
# fails at once.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-8s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() { # dir target
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime" "$1" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

grep -rl --include='*_test.go' '^func Fuzz' . | grep -v '^./.tools/' | sort | while read -r f; do
  dir=$(dirname "$f")
  for t in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
    echo "fuzz $dir $t ($fuzztime)"
    run "$dir" "$t" && continue
    if grep -q 'context deadline exceeded' "$log" && ! grep -qE 'Failing input written|panic:' "$log"; then
      echo "fuzz $dir $t: the Go 1.26 -fuzztime deadline race (go.dev/issue/75804), no failing input: running it again"
      run "$dir" "$t" && continue
    fi
    exit 1
  done
done
