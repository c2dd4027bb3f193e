# The two commands of the README:
#   make run    build and run tether on ./proxy.yaml (embedded store)
#   make test   install what the tests need, then format check, clippy and every test
# and its quick start:
#   make demo   one release build of tether and the whoami demo backend; two backends
#               and tether on ./proxy.yaml, all stopped on Ctrl-C (scripts/demo.sh)
CONFIG ?= proxy.yaml

.PHONY: run demo test deps test-deps bench load capacity

# Only what tether itself needs. (`make demo` builds tether with the whoami example,
# which turns on the features dev-dependencies ask of shared crates: after a demo,
# a first `make run` builds tether once more, without them.)
run: deps
	cargo run --release --bin tether -- --config $(CONFIG)

demo: deps
	@scripts/demo.sh

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

# The capacity model's slopes, its check on a mixed point and the table (docs/capacity.md).
capacity: deps
	cargo build --release --bin tether --example whoami
	python3 benches/capacity/capacity.py
