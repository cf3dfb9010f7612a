#!/usr/bin/env bash
# `cargo deny check`: advisories, bans (duplicate versions, see deny.toml), licences, sources.
# Installs cargo-deny when it is missing. The advisory database is a git repository that
# cargo-deny clones from GitHub into ~/.cargo/advisory-dbs; on a machine that cannot reach
# GitHub, the copy already there is used (--offline), or one is cloned from ADVISORY_DB_SOURCE
# (a path or URL of a clone of github.com/rustsec/advisory-db). Without any, the advisories are
# not checked, and a warning says so.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
    echo "==> installing cargo-deny"
    cargo install cargo-deny --locked
fi

# The folder cargo-deny keeps the default database in (its name hashes the database's URL).
DB_DIR="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"

if cargo deny check 2>/tmp/weft-deny.log; then
    cat /tmp/weft-deny.log >&2
    exit 0
fi
if ! grep -q "failed to fetch advisory database" /tmp/weft-deny.log; then
    cat /tmp/weft-deny.log >&2
    exit 1
fi
echo "note: the advisory database cannot be fetched; using a local copy" >&2
if [[ ! -d "$DB_DIR/.git" && -n "${ADVISORY_DB_SOURCE:-}" ]]; then
    rm -rf "$DB_DIR"
    git clone -q "$ADVISORY_DB_SOURCE" "$DB_DIR"
fi
if [[ -d "$DB_DIR/.git" ]]; then
    echo "note: advisory database of $(git -C "$DB_DIR" log -1 --format=%cs)" >&2
    exec cargo deny --offline check
fi
echo "warning: advisories NOT checked: no advisory database here (set ADVISORY_DB_SOURCE to a" \
    "clone of rustsec/advisory-db); checking bans, licences and sources only" >&2
exec cargo deny --offline check bans licenses sources
