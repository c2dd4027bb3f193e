# The two commands of the README:
#   make run    build and run tether on ./proxy.yaml (embedded store)
#   make test   install what the tests need, then format check, clippy and every test
CONFIG ?= proxy.yaml

.PHONY: run test deps test-deps bench load

run: deps
	cargo run --release --bin tether -- --config $(CONFIG)

test: test-deps
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	# tests run the whoami example as a separate process (to freeze and kill it)
	cargo build --examples
	cargo test --all-targets

deps:
	@scripts/deps.sh

test-deps:
	@scripts/deps.sh --test

# Micro benchmarks (criterion) and the whole-proxy load harness (HAProxy, nginx side by side).
bench: deps
	cargo bench

load: deps
	benches/load/run.sh
