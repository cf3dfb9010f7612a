# Weft: `make run` starts the mesh locally, `make test` runs the whole test suite.
# Both work on a fresh machine: they install or start what they need.

CARGO ?= cargo

# `docker compose` (the plugin) where installed, else the standalone `docker-compose`.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: build test run up down lint fmt release release-pgo clean-data

## Build every binary (debug).
build:
	$(CARGO) build --workspace --bins

## Run the whole test suite: unit tests and black-box tests on SQLite and PostgreSQL.
test:
	scripts/test.sh

## Start the whole mesh locally (weft up): weft-auth, weft-user, weft-order and weft-gateway on
## http://127.0.0.1:8080, SQLite under ./data/, demo products on first start; Ctrl-C stops it.
run: build
	target/debug/weft up --config mesh-config/local.toml

## Start the whole stack in containers (docker-compose.yml): the four Weft processes configured
## from mesh-config/compose.toml, PostgreSQL, Jaeger (UI on http://localhost:16686) and
## Prometheus (http://localhost:9090); the API on http://localhost:8080. Needs Docker.
up:
	$(COMPOSE) up --build -d

## Stop the stack started by `make up` (the PostgreSQL volume is kept; `$(COMPOSE) down -v`
## deletes it).
down:
	$(COMPOSE) down

## Formatting, lints and `cargo deny` (advisories, duplicate versions, licences), as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/deny.sh

fmt:
	$(CARGO) fmt --all

## Build every binary optimised (target/release).
release:
	$(CARGO) build --workspace --bins --release

## The image's binaries built with profile-guided optimisation, as deploy/Dockerfile builds them
## (target/pgo/release): built instrumented, trained under a load on a local mesh, built again.
## Needs llvm-profdata of rustc's LLVM (`rustup component add llvm-tools`); stop `make run` first.
release-pgo:
	scripts/release-pgo.sh

## Delete the local SQLite databases.
clean-data:
	rm -rf data
