#!/usr/bin/env bash
# The whole test suite. Bootstraps what a fresh machine lacks (cargo-nextest, a reachable
# PostgreSQL), builds the binaries the black-box tests start, then runs every test.
# Outside CI a missing PostgreSQL only skips the PostgreSQL runs; with CI=true it is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

if [[ -z "${WEFT_TEST_POSTGRES_URL:-}" ]]; then
    if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
        export WEFT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"
    elif [[ "${CI:-}" == "true" ]]; then
        echo "error: CI=true but no PostgreSQL answers on 127.0.0.1:5432 and WEFT_TEST_POSTGRES_URL is unset" >&2
        exit 1
    else
        echo "note: no PostgreSQL on 127.0.0.1:5432; the PostgreSQL runs will be skipped" >&2
    fi
fi
[[ -n "${WEFT_TEST_POSTGRES_URL:-}" ]] && echo "==> PostgreSQL tests use ${WEFT_TEST_POSTGRES_URL%%\?*}"

echo "==> Python tools for the validators (.venv)"
# shellcheck source=venv.sh
source scripts/venv.sh
ensure_python_module openapi_spec_validator 'openapi-spec-validator>=0.7,<1'
ensure_python_module yaml 'PyYAML>=6,<7'
ensure_python_module schemathesis 'schemathesis>=4.32,<4.33'

echo "==> chromium for the trace viewer's browser test"
# Debian's chromium, installed when missing and apt-get can (root, or sudo); without it the
# browser test skips outside CI and fails under CI=true.
if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null; then
    sudo=""
    [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null && sudo="sudo -n"
    if [[ "$(id -u)" -eq 0 || -n "$sudo" ]]; then
        $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium \
            || echo "note: chromium could not be installed; the browser test will be skipped" >&2
    fi
fi

echo "==> playwright-core for the trace viewer's browser test (.playwright)"
# The test itself runs this script too; here a failure to install is said once, up front. The
# browser is Debian's chromium (.ci/run installs it); without it the test skips outside CI.
if ! scripts/playwright.sh >/dev/null; then
    if [[ "${CI:-}" == "true" ]]; then
        echo "error: CI=true but playwright-core could not be installed (node and npm needed)" >&2
        exit 1
    fi
    echo "note: playwright-core could not be installed; the browser test will be skipped" >&2
fi

echo "==> layout: imports go one way, the mesh names no service"
python3 scripts/check-layout.py

echo "==> building binaries"
cargo build --workspace --bins
echo "==> running tests"
cargo nextest run --workspace --no-fail-fast "$@"
