# The two commands a newcomer needs: `make run` and `make test`. Everything they need is
# installed or fetched by the targets below (Rust components, the servers of the local stack).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

STACK := infra/local/stack
# The stack's addresses (derived from the STACK_* port settings) for the app and the tests.
WITH_STACK_ENV := eval "$$($(STACK) env)" &&

# On CI the checkout is fresh every run: keep cargo's build cache outside it.
ifeq ($(CI),true)
export CARGO_TARGET_DIR ?= $(HOME)/.cache/dietstream/target
endif
DIETSTREAM := $(or $(CARGO_TARGET_DIR),target)/debug/dietstream
export CARGO_TERM_COLOR ?= never

.PHONY: help run test bench up down status clean tools lint interop-env

# Python venv with Confluent's own client, the independent side of tests/interop.rs.
INTEROP_VENV ?= $(HOME)/.cache/dietstream/interop-venv
INTEROP_REQUIREMENTS := tests/interop/requirements.txt

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

run: up ## Local stack, topology, schemas, tables; then the command processor and indexer under a simulated load, and queries.
	cargo build --quiet
	$(WITH_STACK_ENV) $(DIETSTREAM) topology apply
	$(WITH_STACK_ENV) $(DIETSTREAM) schemas register | tail -n 1
	$(WITH_STACK_ENV) $(DIETSTREAM) migrate
	$(WITH_STACK_ENV) $(DIETSTREAM) roundtrip | tail -n 1
	$(WITH_STACK_ENV) infra/local/pipeline $(DIETSTREAM)

test: tools lint up interop-env ## Format check, clippy, docs, then every test against the local stack.
	@log=$$(mktemp); \
	$(WITH_STACK_ENV) INTEROP_PYTHON="$(INTEROP_VENV)/bin/python" cargo test --all-targets --no-fail-fast 2>&1 | tee "$$log" || status=$$?; \
	awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i } } \
	     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$$log"; \
	rm -f "$$log"; exit $${status:-0}

bench: up ## Benchmark the command processor and the read-model processors on the local stack (release), and the processors' saved states; figures in target/bench/{commands,processors,states}.json.
	$(WITH_STACK_ENV) cargo bench --bench commands
	$(WITH_STACK_ENV) cargo bench --bench processors
	cargo bench --bench states

up: ## Start Kafka, Cassandra and the schema registry (idempotent; waits until ready).
	$(STACK) up

down: ## Stop the local stack (data is kept).
	$(STACK) down

status: ## Show which servers of the local stack run, and where.
	$(STACK) status

clean: ## Stop the local stack and delete its data and logs.
	$(STACK) clean

interop-env: ## Python venv with Confluent's client for the interop tests (reinstalled when requirements change).
	@want=$$(sha256sum $(INTEROP_REQUIREMENTS) | cut -d' ' -f1); stamp="$(INTEROP_VENV)/.requirements.sha256"; \
	if [ -x "$(INTEROP_VENV)/bin/python" ] && [ "$$(cat "$$stamp" 2>/dev/null)" = "$$want" ]; then exit 0; fi; \
	command -v python3 >/dev/null || { echo "python3 not found: install Python 3.11"; exit 1; }; \
	echo "interop-env: installing $(INTEROP_REQUIREMENTS) into $(INTEROP_VENV)"; \
	rm -rf "$(INTEROP_VENV)"; \
	python3 -m venv "$(INTEROP_VENV)"; \
	"$(INTEROP_VENV)/bin/python" -m pip install --quiet --disable-pip-version-check -r $(INTEROP_REQUIREMENTS); \
	"$(INTEROP_VENV)/bin/python" -c "import confluent_kafka.schema_registry.avro"; \
	echo "$$want" > "$$stamp"

tools: ## Install the Rust components the checks use, if missing.
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
	@cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

lint: tools ## cargo fmt --check, clippy -D warnings (with and without the containers feature), docs.
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features containers -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
