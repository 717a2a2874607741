# llmq — durable LLM jobs. `make` (or `make help`) lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# CI=true on a clean clone: build exactly what Cargo.lock says.
LOCKED := $(if $(and $(filter true,$(CI)),$(wildcard Cargo.lock)),--locked)
# Quiet logs in tests unless the caller asks for more (RUST_LOG=debug make test).
TEST_RUST_LOG ?= $(or $(RUST_LOG),warn)
# make test PKG=llmq-shared runs one package; TEST_ARGS are passed on
# (e.g. TEST_ARGS=name_filter or TEST_ARGS='-- --nocapture').
PKG ?=
TEST_SCOPE := $(if $(PKG),$(foreach p,$(PKG),-p $(p)),--workspace)
TEST_ARGS ?=

.PHONY: help setup build run test bench bench-curve bench-split bench-slow bench-provider-limits chaos migrate fmt lint clean-run model

help: ## Show this help
	@printf 'Usage: make <target>\n\n'
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'
	@printf '\nEnv: DATABASE_URL, AMQP_URL, LLMQ_CONFIG, LLMQ_HTTP_PORT, LLMQ_PROVIDER_BASE_URL, CI=true\n'
	@printf 'Test a subset: make test PKG=llmq-shared TEST_ARGS=some_test_name\n'

setup: ## Install/start PostgreSQL, RabbitMQ and Redis, create the database
	@bash scripts/setup.sh

build: ## Build the release binaries (llmq-api, llmq-worker)
	$(CARGO) build --release $(LOCKED) -p llmq-api -p llmq-worker

run: ## Run the whole stack locally with a small real model (Ctrl-C stops it)
	@bash scripts/run.sh

test: setup ## Run every test of the workspace (needs PostgreSQL, RabbitMQ and Redis)
	$(CARGO) build --workspace --bins $(LOCKED)
	RUST_LOG=$(TEST_RUST_LOG) CARGO=$(CARGO) bash scripts/test.sh $(TEST_SCOPE) --no-fail-fast $(LOCKED) $(TEST_ARGS)

bench: ## Run the benchmarks (scripts/bench.sh)
	@bash scripts/bench.sh

bench-curve: ## Latency-versus-load sweep at 0 ms: .run/bench-curve.{json,svg}
	@BENCH_CURVE=1 BENCH_SETTINGS="0:1024:100:2000 0:1024:500:5000 0:1024:1000:10000 0:1024:2500:20000 0:1024:5000:20000 0:1024" bash scripts/bench.sh

bench-split: ## The 0 ms setting with production split 90/10 over the benchmark prompt's v2 and v1
	@BENCH_SPLIT=$${BENCH_SPLIT:-2:90,1:10} BENCH_SETTINGS=$${BENCH_SETTINGS:-0:1024} bash scripts/bench.sh

bench-provider-limits: ## The 0 ms setting with provider limits (Redis) set high enough never to defer
	@BENCH_PROVIDER_LIMITS=$${BENCH_PROVIDER_LIMITS:-100000:100000000:100000000000} BENCH_SETTINGS=$${BENCH_SETTINGS:-0:1024} bash scripts/bench.sh

bench-slow: ## A 30 s model at 1,000 submits/s for a minute (~30,000 calls in flight)
	@BENCH_TIMEOUT=$${BENCH_TIMEOUT:-300} BENCH_SETTINGS="30000:32768:1000:60000" bash scripts/bench.sh

chaos: ## Run the chaos tests (scripts/chaos.sh)
	@bash scripts/chaos.sh

migrate: setup build ## Apply database migrations (uses DATABASE_URL / LLMQ_CONFIG)
	target/release/llmq-api migrate

model: ## Start only the local model server (stop it with make clean-run)
	@bash scripts/local-model.sh start

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Check formatting and clippy warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(LOCKED) -- -D warnings

clean-run: ## Stop processes left over by `make run` (.run/*.pid)
	@bash scripts/clean-run.sh
