# nixcache: `make run` runs the cache locally, `make test` runs every test.
# Both install what is missing first (scripts/tools.sh).

SERVICES := signer index gateway
BIN      := bin
TOOLS    := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(PATH)

GO_BUILD := CGO_ENABLED=0 go build -trimpath -ldflags='-s -w'

.PHONY: all build run test test-unit test-e2e test-load test-crash-long tools tools-run proto proto-check lint vet fmt-check clean bench bench-smoke test-compose compose-up compose-s3-up fuzz-smoke

all: build

build:
	@mkdir -p $(BIN)
	$(foreach s,$(SERVICES),$(GO_BUILD) -o $(BIN)/nixcache-$(s) ./services/$(s) &&) true
	$(GO_BUILD) -o $(BIN)/nixcache ./cmd/nixcache

tools:
	@scripts/tools.sh

tools-run:
	@scripts/tools.sh --run

## run: all three services on this machine, data in ./data, gateway on 127.0.0.1:5000.
run: tools-run build
	@scripts/run-local.sh

## test: everything CI runs.
test: tools proto-check vet lint fmt-check build test-unit test-e2e bench-smoke test-compose fuzz-smoke

test-unit:
	go test -count=1 ./bench/... ./cmd/nixcache/... ./nix/... ./platform/... ./services/signer/... ./services/index/... ./services/gateway/...

test-e2e: build
	NIXCACHE_BIN=$(CURDIR)/$(BIN) go test -count=1 -timeout 20m -skip '^TestCompose' ./e2e/...

## test-load: the load test (e2e/load_test.go, docs/development.md § Load test) for LOAD_DURATION; load.json and load.md in LOAD_OUT.
## (make test-e2e runs the same test for 15 s.)
LOAD_DURATION ?= 60s
LOAD_OUT ?= $(or $(TMPDIR),/tmp)/nixcache-load
test-load: build
	NIXCACHE_BIN=$(CURDIR)/$(BIN) NIXCACHE_LOAD_DURATION=$(LOAD_DURATION) NIXCACHE_ARTIFACTS=$(LOAD_OUT) \
	  go test -count=1 -timeout 15m -v -run '^TestLoad$$' ./e2e/...

## test-crash-long: the crash test (e2e/crash_test.go) with 200 kills instead of CI's 20; CRASH_KILLS=n, NIXCACHE_CRASH_SEED=s to replay.
CRASH_KILLS ?= 200
test-crash-long: build
	NIXCACHE_BIN=$(CURDIR)/$(BIN) NIXCACHE_CRASH_KILLS=$(CRASH_KILLS) go test -count=1 -timeout 60m -run '^TestCrashConsistency$$' -v ./e2e/...

## test-compose: docker-compose.yml run on this machine's Docker engine, driven by the real Nix client (e2e/compose*_test.go:
## the deployment, the nix-serve migration with pull-through, the upgrade from the previous release with backup and restore).
test-compose: build
	NIXCACHE_BIN=$(CURDIR)/$(BIN) go test -count=1 -timeout 15m -run '^TestCompose' ./e2e/...

## compose-up: the cache in Docker (docs/deploy.md § Deploying with docker compose): images, a push token, start, public key.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)
compose-up: build
	@docker/init-auth.sh
	$(COMPOSE) up -d --build
	@echo "nixcache: public key for trusted-public-keys (docker compose exec signer /nixcache-signer list-keys):" >&2
	@$(COMPOSE) exec -T signer /nixcache-signer list-keys

## bin/versitygw: the S3 server of docker/s3.yml, static, at the version pinned in scripts/tools.sh.
VERSITYGW := $(shell grep -o 'github.com/versity/versitygw/cmd/versitygw@[^ ]*' scripts/tools.sh)
bin/versitygw: scripts/tools.sh
	@mkdir -p $(BIN)
	GOBIN=$(CURDIR)/$(BIN) GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 go install $(VERSITYGW)

## compose-s3-up: compose-up with the NAR files in a bucket (docker/s3.yml, docs/deploy.md § The bucket backend in compose).
compose-s3-up: build bin/versitygw
	@docker/init-auth.sh
	@docker/init-s3.sh
	COMPOSE_FILE=docker-compose.yml:docker/s3.yml $(COMPOSE) up -d --build
	@echo "nixcache: public key for trusted-public-keys (docker compose exec signer /nixcache-signer list-keys):" >&2
	@COMPOSE_FILE=docker-compose.yml:docker/s3.yml $(COMPOSE) exec -T signer /nixcache-signer list-keys

## bench: the cache shootout against nginx (bench/README.md); results in bench/results/<date>.{md,json,png}.
bench: tools
	go run ./bench -repo $(CURDIR) -out $(CURDIR)/bench/results

## bench-smoke: the same, tiny (a few paths, one round), so that the benchmark keeps working; results in $$TMPDIR.
bench-smoke: tools
	go run ./bench -repo $(CURDIR) -smoke

## proto: regenerate the committed Go code from proto/.
proto:
	buf lint
	buf generate

## proto-check: fail when the committed generated code is stale or buf lint complains.
proto-check: proto
	@git diff --exit-code -- proto || { echo "generated code in proto/ is stale: run 'make proto' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- proto)" || { git status --porcelain -- proto; echo "untracked generated files in proto/: run 'make proto' and commit" >&2; exit 1; }

## fuzz-smoke: every `go test -fuzz` target in the repo for FUZZTIME each (scripts/fuzz-smoke.sh).
FUZZTIME ?= 8s
fuzz-smoke:
	FUZZTIME=$(FUZZTIME) scripts/fuzz-smoke.sh

## lint: golangci-lint (.golangci.yml) in each module of go.work; generated proto code is skipped.
MODULES := cmd/nixcache nix platform proto services/signer services/index services/gateway e2e bench
lint:
	@fail=0; for m in $(MODULES); do echo "lint $$m"; (cd $$m && golangci-lint run --config $(CURDIR)/.golangci.yml ./...) || fail=1; done; exit $$fail

vet:
	go vet ./cmd/nixcache/... ./nix/... ./platform/... ./proto/... ./services/signer/... ./services/index/... ./services/gateway/... ./e2e/... ./bench/...

fmt-check:
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.\(gw\.\)\?go$$')); \
	  test -z "$$bad" || { echo "not gofmt-formatted:"; echo "$$bad"; exit 1; }

clean:
	rm -rf $(BIN)
