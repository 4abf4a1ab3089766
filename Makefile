# gpubridge — see README.md. Every target builds or installs what it needs itself.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: build test unit lint fmt crds bench

build:
	$(CARGO) build --locked --release --bin gpubridge

## test: everything CI runs: lint, then every unit, fixture and mocked-API test.
test: lint unit

unit:
	$(CARGO) test --locked --all-targets

## lint: formatting and clippy, warnings as errors.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## crds: regenerate crds/ from the Rust types (a test fails when they drift).
crds:
	$(CARGO) run --locked --quiet -- crdgen --out-dir crds

## bench: criterion benchmarks; figures print to the terminal.
bench:
	$(CARGO) bench --locked --bench capacity
