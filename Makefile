# ssi — see README.md. `make demo` and `make test` work on a fresh Debian 12 machine.
GO ?= go
BIN := bin/ssi
DEMO_DIR ?= $(CURDIR)/.demo
DEMO_NODES ?= 3
# Fuzzing budgets, in executions per fuzz target (scripts/fuzz.sh): a count,
# not a duration, which Go 1.26's fuzz coordinator can fail on spuriously.
# On the project's 2-core machines the short one takes a few seconds for
# most targets (FuzzReadNodeFile, which writes a file per input, ~20-40s).
FUZZ_SHORT ?= 30000x
FUZZ_LONG ?= 300000x
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin

.PHONY: all build deps demo demo-down test test-vm fuzz bench bench-cfs bench-cvip suites-cfs proto vet fmt clean links robustness

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
	@echo "one root: a file written on node 2 is read on node $(DEMO_NODES):"
	echo "hello from node 2" > $(DEMO_DIR)/mnt/node2/hello && cat $(DEMO_DIR)/mnt/node$(DEMO_NODES)/hello
	@if [ $(DEMO_NODES) -gt 1 ]; then \
	  echo "a synchronous replica of the cluster root on node 2, which takes over if node 1 dies:"; \
	  SSI_SOCKET=$(DEMO_DIR)/node1/ssi.sock ./$(BIN) cfs replica 2 >/dev/null && \
	  for i in $$(seq 50); do SSI_SOCKET=$(DEMO_DIR)/node1/ssi.sock ./$(BIN) cfs --json | grep -q '"synced": true' && break; sleep 0.2; done; \
	  SSI_SOCKET=$(DEMO_DIR)/node1/ssi.sock ./$(BIN) cfs; fi

demo-down:
	./$(BIN) down --dir $(DEMO_DIR)

# go vet, every test with the race detector, a short run of every fuzz
# target, then the list of skipped tests (scripts/test.sh).
test: deps
	@FUZZ_BUDGET=$(FUZZ_SHORT) bash scripts/test.sh

# Diskless nodes booting in QEMU (software emulation) from the initramfs of
# ssi mkinitrd: test/e2e/netboot_test.go (build tag vm), docs/NETBOOT.md.
# 1-1.5 minutes on a quiet 2-core machine, up to 5 under load: not in make test.
test-vm: deps
	$(GO) test -race -tags vm -count=1 -timeout 30m -run 'TestNetbootVM|TestMkinitrd|TestVMBadInput' -v ./test/e2e/

# The robustness suite for longer, under a CPU-saturating load that also
# counts false DOWNs (test/robustness; docs/RELIABILITY.md). make test runs
# it briefly (40s of operations and faults).
ROBUSTNESS_DURATION ?= 10m
robustness: deps
	ROBUSTNESS_DURATION=$(ROBUSTNESS_DURATION) ROBUSTNESS_LOAD=1 ROBUSTNESS_CHECK_TIMEOUT=10m \
		$(GO) test -count=1 -run TestRobustness -v -timeout 90m ./test/robustness/

# A longer run of every fuzz target: make fuzz [FUZZ_LONG=1000000x]
fuzz:
	@bash scripts/fuzz.sh $(FUZZ_LONG)

bench: build
	@bash scripts/deps.sh --bench
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/...

# The cluster filesystem vs local ext4 vs sshfs (bench/cfs.sh; docs/PERFORMANCE.md).
bench-cfs:
	@bash scripts/deps.sh --bench
	bash bench/cfs.sh

# The cluster virtual IP vs HAProxy vs a direct connection (bench/cvip.sh;
# docs/PERFORMANCE.md): make bench-cvip [CVIP_SECONDS=5]
CVIP_SECONDS ?= 5
bench-cvip:
	@bash scripts/deps.sh --bench
	bash bench/cvip.sh $(CVIP_SECONDS)

# CPython's and Go's own test suites on the cluster filesystem and on ext4.
suites-cfs:
	@bash scripts/deps.sh --bench --suites
	bash bench/cfs.sh --suites

proto:
	protoc -I proto --go_out=. --go_opt=module=github.com/ssi-cluster/ssi \
		--connect-go_out=. --connect-go_opt=module=github.com/ssi-cluster/ssi \
		proto/ssi/v1/*.proto

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go')

clean:
	rm -rf bin
