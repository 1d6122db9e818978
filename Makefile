# csi-cache — build, run and test. `make help` lists the targets.

SHELL       := /bin/bash
GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -X github.com/csi-cache/csi-cache/internal/version.Version=$(VERSION) \
               -X github.com/csi-cache/csi-cache/internal/version.Commit=$(COMMIT)
BIN         := bin/csi-cache
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 10s
# Test timeout for one package under -race on a 2-core machine.
TEST_TIMEOUT ?= 20m

.PHONY: help build run test test-short lint bench bench-engine bench-nbd fuzz stress e2e deps clean chart-test helm-lint deploy image sanity

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/csi-cache (static, version from git)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/csi-cache

run: build ## the main job on the embedded default: export a volume of a sparse cache file over NBD
	./$(BIN) export

deps: ## install the Debian packages the tests use (fast when present)
	./hack/deps.sh

test: deps ## unit + integration tests (main module and the chart tests): -race, invariants tag, summary line at the end
	set -o pipefail; { CSI_CACHE_REQUIRE_TOOLS=1 $(GO) test -race -tags invariants -count=1 -timeout $(TEST_TIMEOUT) -json ./...; \
		(cd test/chart && $(GO) test -race -tags invariants -count=1 -timeout $(TEST_TIMEOUT) -json ./...); } \
		| $(GO) run ./hack/testsummary

test-short: ## quick tests without -race (for the edit-compile loop)
	$(GO) test -short -count=1 ./...

lint: ## gofmt, go vet, staticcheck (pinned), project rules
	@bad=$$(gofmt -l $$(git ls-files '*.go') 2>/dev/null); \
		if [ -n "$$bad" ]; then echo "gofmt would change:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags invariants ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) -tags invariants ./...
	$(GO) test -count=1 ./internal/lint/
	cd test/chart && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...

chart-test: ## render the Helm chart with Helm's Go SDK and check every object (nested module test/chart)
	cd test/chart && $(GO) test -race -tags invariants -count=1 -timeout $(TEST_TIMEOUT) ./...

helm-lint: ## helm lint --strict of the chart with each ci values file (builds the pinned helm into .cache/bin once)
	./hack/helm-lint.sh

deploy: ## regenerate deploy/csi-cache.yaml from the chart
	./hack/chart-render.sh

image: ## build the container image (needs docker with BuildKit; not available on the dev machines)
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t csi-cache:$(VERSION) .

sanity: build ## csi-sanity v5.6.0 against the built `csi-cache serve` (Node specs need the nbd driver: all of them run in the VM)
	./hack/csi-sanity.sh

bench: ## benchmarks of every package (go test -bench)
	$(GO) test -run '^$$' -bench . -benchmem ./...

bench-engine: ## data-path benchmarks vs their peers in the same run (hits vs pread, misses, Zipf vs LRU/OPT, writes), medians of 5
	./bench/engine-bench.sh

bench-nbd: deps ## csi-cache vs nbdkit vs qemu-nbd over fio's nbd engine, ratio table (~12 min; see bench/README.md)
	./bench/nbd-compare.sh

fuzz: ## run every fuzz target for FUZZTIME (default 10s) each
	./hack/fuzz.sh $(FUZZTIME)

stress: ## long randomized and crash tests (more iterations than make test)
	CSI_CACHE_STRESS=1 $(GO) test -race -tags invariants -count=1 -timeout 60m ./pkg/engine/...

e2e: ## end-to-end scenarios in a QEMU VM with the real kernel nbd driver (E2E="nbd-attach ..." picks some)
	./hack/e2e.sh $(E2E)

clean: ## remove build output
	rm -rf bin
