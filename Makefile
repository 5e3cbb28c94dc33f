# plinth's commands. `make test` and `make lint` are what CI runs (.ci/run).
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: help test lint fmt run token bench bench-load clean

# `make token ORG=...`: which organization, and the local stack's directory (as `make run`'s).
ORG ?= dev-org
PLINTH_DEV_DIR ?= .dev

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

test: ## every test: installs etcd/PowerDNS/BIND9/dig when missing, starts a throwaway PostgreSQL, and checks `make run` with each DNS server
	scripts/test-deps.sh
	$(CARGO) build --workspace --all-features --bins  # the crash tests run the plinth binary itself
	scripts/with-test-services.sh $(CARGO) nextest run --workspace --all-features --no-fail-fast
	$(CARGO) test --workspace --all-features --doc
	scripts/check-make-run.sh
	PLINTH_DNS=bind scripts/check-make-run.sh

lint: ## formatting, clippy (warnings are errors), cargo-deny, the dependency rule
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	$(CARGO) deny --log-level error check --hide-inclusion-graph licenses bans sources
	scripts/check-domain-deps.sh

fmt: ## format the code
	$(CARGO) fmt --all

run: ## the whole local stack on loopback, ready to curl (Ctrl-C stops it; PLINTH_DNS=bind for BIND9)
	scripts/run-stack.sh

token: ## a token for organization ORG on the `make run` stack: make token ORG=org-b
	@PLINTH_ENV=dev PLINTH__AUTH__DEV_SIGNING_KEY_FILE=$(PLINTH_DEV_DIR)/jwt-signing.pem \
		$(CARGO) run -q --bin plinth -- dev-token --org $(ORG)

bench: ## benchmarks that print their numbers (see docs/BENCHMARKS.md)
	scripts/with-test-services.sh $(CARGO) bench --workspace --all-features

bench-load: ## a load benchmark of foundings on the local stack; prints numbers (scripts/bench-load.sh)
	scripts/bench-load.sh

clean: ## build output and the local stack's state
	$(CARGO) clean
	rm -rf .dev
