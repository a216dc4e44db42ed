# Visor. `make run` starts a dev agent with embedded etcd; `make test` runs the suite.
GO        ?= go
BIN       := bin/visor
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE      ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS   := -X github.com/visorhq/visor/internal/version.Version=$(VERSION) \
             -X github.com/visorhq/visor/internal/version.Commit=$(COMMIT) \
             -X github.com/visorhq/visor/internal/version.Date=$(DATE)
# Tests that need root or long runs opt in through these. The timeout is a
# guard per package: test/vm took 20+ min under -race at load 40 (boots of
# emulated guests); not yet measured on an idle machine.
TESTFLAGS ?= -race -count=1 -timeout 30m

.PHONY: all build run test vet fmt bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/visor

## run: the dev agent with embedded etcd on 127.0.0.1:2379 (Ctrl-C stops it and its instances).
run: build
	./$(BIN) agent -dev

## test: vet, formatting and the whole suite (real etcd embedded, real processes) with -race.
## As root it first installs what the VM suite (test/vm) needs (test-deps).
test: vet test-deps
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || (echo "gofmt: files above need formatting" && exit 1)
	$(GO) test $(TESTFLAGS) ./...

vet:
	$(GO) vet ./...

fmt:
	gofmt -w .

## bench: Go benchmarks of the registry and supervisor (figures go to BENCHMARKS.md).
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./registry/ ./supervisor/

clean:
	rm -rf bin

## package: the .deb and .rpm (packaging/nfpm.yaml) of the linux binary in bin/packages/;
## PKG_ARCH=arm64 for arm64. nfpm runs through `go run`: nothing but Go is needed.
.PHONY: package
package:
	@set -e; \
	arch="$${PKG_ARCH:-$$($(GO) env GOARCH)}"; \
	pkgver="$${PKG_VERSION:-$$(echo '$(VERSION)' | sed -n 's/^v\{0,1\}\([0-9]\{1,\}\.[0-9]\{1,\}\.[0-9]\{1,\}[0-9A-Za-z.+~-]*\)$$/\1/p')}"; \
	[ -n "$$pkgver" ] || pkgver="0.0.0~dev+$(COMMIT)"; \
	mkdir -p bin/package bin/packages; \
	echo "building visor $$pkgver for linux/$$arch"; \
	GOOS=linux GOARCH=$$arch CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/package/visor ./cmd/visor; \
	for p in deb rpm; do \
		GOARCH=$$arch PKG_VERSION=$$pkgver $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2 \
			package -f packaging/nfpm.yaml -p $$p -t bin/packages/; \
	done

## test-deps: as root with apt, install what test/vm needs (qemu-system-x86, qemu-utils,
## mmdebstrap) and the dashboard's browser test needs (chromium) when missing; elsewhere it
## does nothing, and those tests skip with a message.
.PHONY: test-deps vm-image test-vm
test-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		missing=""; \
		command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-system-x86"; \
		command -v qemu-img >/dev/null 2>&1 || missing="$$missing qemu-utils"; \
		command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
		command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
		if [ -n "$$missing" ]; then \
			echo "test-deps: apt-get install$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing >/dev/null || \
			{ apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing >/dev/null; } || \
			echo "test-deps: could not install$$missing; the VM suite will skip"; \
		fi; \
	fi

## vm-image: build (or find cached) the VM suite's Debian image; prints its directory.
vm-image: test-deps
	./test/vm/image/mkimage.sh

## test-vm: the VM suite alone (root; boots Debian guests under qemu).
test-vm: test-deps
	$(GO) test -count=1 -timeout 20m -v ./test/vm/
