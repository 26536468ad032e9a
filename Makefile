# nixcache: `make run` runs the cache locally, `make test` runs every test.
# Both install what is missing first (scripts/tools.sh).

SERVICES := signer index gateway
BIN      := bin
TOOLS    := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(PATH)

GO_BUILD := CGO_ENABLED=0 go build -trimpath -ldflags='-s -w'

.PHONY: all build run test test-unit test-e2e tools tools-run proto proto-check lint vet fmt-check clean

all: build

build:
	@mkdir -p $(BIN)
	$(foreach s,$(SERVICES),$(GO_BUILD) -o $(BIN)/nixcache-$(s) ./services/$(s) &&) true

tools:
	@scripts/tools.sh

tools-run:
	@scripts/tools.sh --run

## run: all three services on this machine, data in ./data, gateway on 127.0.0.1:5000.
run: tools-run build
	@scripts/run-local.sh

## test: everything CI runs.
test: tools proto-check vet fmt-check build test-unit test-e2e

test-unit:
	go test -count=1 ./nix/... ./platform/... ./services/signer/... ./services/index/... ./services/gateway/...

test-e2e: build
	NIXCACHE_BIN=$(CURDIR)/$(BIN) go test -count=1 -timeout 20m ./e2e/...

## proto: regenerate the committed Go code from proto/.
proto:
	buf lint
	buf generate

## proto-check: fail when the committed generated code is stale or buf lint complains.
proto-check: proto
	@git diff --exit-code -- proto || { echo "generated code in proto/ is stale: run 'make proto' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- proto)" || { git status --porcelain -- proto; echo "untracked generated files in proto/: run 'make proto' and commit" >&2; exit 1; }

vet:
	go vet ./nix/... ./platform/... ./proto/... ./services/signer/... ./services/index/... ./services/gateway/... ./e2e/...

fmt-check:
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.\(gw\.\)\?go$$')); \
	  test -z "$$bad" || { echo "not gofmt-formatted:"; echo "$$bad"; exit 1; }

clean:
	rm -rf $(BIN)
