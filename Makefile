# ssi — see README.md. `make demo` and `make test` work on a fresh Debian 12 machine.
GO ?= go
BIN := bin/ssi
DEMO_DIR ?= $(CURDIR)/.demo
DEMO_NODES ?= 3
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin

.PHONY: all build deps demo demo-down test test-short fuzz bench proto vet fmt clean links

all: build

deps:
	@bash scripts/deps.sh

build:
	$(GO) build -o $(BIN) ./cmd/ssi

links: build
	./$(BIN) install-links bin

demo: deps build links
	-./$(BIN) down --dir $(DEMO_DIR) >/dev/null 2>&1
	./$(BIN) up --nodes $(DEMO_NODES) --dir $(DEMO_DIR)
	SSI_SOCKET=$(DEMO_DIR)/node1/ssi.sock ./bin/cluster -V

demo-down:
	./$(BIN) down --dir $(DEMO_DIR)

# Every test, race detector on, then a short run of every fuzz target.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 40m ./...
	@bash scripts/fuzz.sh 10s

fuzz:
	@bash scripts/fuzz.sh 60s

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/...

proto:
	protoc -I proto --go_out=. --go_opt=module=github.com/ssi-cluster/ssi \
		--connect-go_out=. --connect-go_opt=module=github.com/ssi-cluster/ssi \
		proto/ssi/v1/ssi.proto

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go')

clean:
	rm -rf bin
