# qm: a networked master/worker task queue.
GO        ?= go
BIN       := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# A count, not a duration, for the smoke run: when a duration runs out while
# a fuzz worker is busy, go test can report "context deadline exceeded" as a
# failure though nothing was found.
FUZZTIME  ?= 20000x

.PHONY: all build demo test lint fuzz fuzz-smoke bench bench-smoke soak clean

all: build

# -buildvcs=auto: the binaries' --version names the commit they were built
# from, even where GOFLAGS turns that off.
build:
	$(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/...

# A master, two workers and a producer on loopback; everything is stopped again.
demo: build
	bash scripts/demo.sh

# What CI runs: formatting, vet, staticcheck, the race-enabled tests (fuzz
# seed corpora included), 20,000 inputs of each fuzz target, and a small
# run of the benchmark comparison so that it cannot rot. The e2e package
# alone takes 8-10 minutes on a 2-core machine, near go test's default
# timeout of 10 minutes per package.
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz-smoke
	$(MAKE) bench-smoke

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	# The master and the worker build for the systems users run them on.
	for os in darwin windows freebsd; do GOOS=$$os GOARCH=amd64 $(GO) build -o /dev/null ./cmd/qmaster ./cmd/qworker || exit 1; done

# The soaks of e2e/soak_test.go and e2e/soak_master_test.go for two minutes
# each instead of make test's 20s: producers, workers (and, in the second,
# the master) killed and restarted at random, master RSS and goroutines
# reported (docs/RELIABILITY.md).
soak:
	QM_SOAK=2m $(GO) test -race -run Soak -count=1 -timeout 10m -v ./e2e/

# Every fuzz target for FUZZTIME inputs (make fuzz FUZZTIME=10m for a long run).
fuzz fuzz-smoke:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for target in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "fuzz $$pkg $$target ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg > /tmp/qm-fuzz.log 2>&1 || { cat /tmp/qm-fuzz.log; exit 1; }; \
	  done; \
	done

# The Go benchmarks, then qbench: qm against Python BaseManager and Redis
# lists on one workload (a few minutes); the table goes to docs/PERFORMANCE.md.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(BIN)/qbench --bin $(BIN) --out docs/PERFORMANCE.md

# The same comparison with tiny sizes, in seconds and without thresholds,
# so that the harness cannot rot.
bench-smoke: build
	$(BIN)/qbench --bin $(BIN) --n 2000 --slow-n 200 --rtt 100 --mem-n 10000

clean:
	rm -rf $(BIN)
