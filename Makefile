# totes-cdc — the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test build lint bench fuzz deps clean deploy-check

## run: the whole pipeline on a laptop, on generated totesys data (Ctrl-C stops it)
run: deps
	$(CARGO) build --release --bin totes-cdc
	./scripts/run-local.sh

## test: every test, against real PostgreSQL servers the tests start themselves
test: deps
	$(CARGO) test --features failpoints --no-fail-fast

## build: the release binary (target/release/totes-cdc)
build:
	$(CARGO) build --release --bin totes-cdc

## fuzz: the decoders of untrusted bytes (pgoutput, envelopes, COPY rows, lake files) under
## twenty times the mutated cases of `make test`
fuzz:
	TOTES_CDC_FUZZ_FACTOR=20 $(CARGO) test --features failpoints --lib mutated

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --lib --bins --benches -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings

## bench: throughput against the physical limit (pg_recvlogical), written to BENCHMARKS.md
bench: deps
	$(CARGO) build --release --bin totes-cdc
	./scripts/bench.sh

## deploy-check: the deployment under helm lint, checkov, hadolint, yamllint, actionlint and
## terraform fmt (make test runs them too)
deploy-check: deps
	./scripts/deploy-check.sh

deps:
	@./scripts/deps.sh

clean:
	@./scripts/run-local.sh --stop 2>/dev/null || true
	rm -rf ./data
