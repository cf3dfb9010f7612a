#!/usr/bin/env bash
# Installs playwright-core (pinned) for the trace viewer's browser test (cli/tests/viewer.rs)
# into .playwright/ (override with WEFT_PLAYWRIGHT_DIR; gitignored), once, and prints its
# node_modules folder. The browser is Debian's chromium (.ci/run installs it): Playwright
# downloads none. Tests run in parallel, so a lock lets one install while the others wait.
set -euo pipefail

version="1.65.2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${WEFT_PLAYWRIGHT_DIR:-$root/.playwright}"

exec 9>"${TMPDIR:-/tmp}/weft-playwright.lock"
flock 9
installed="$(node -p "require('$dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)"
if [[ "$installed" != "$version" ]]; then
    mkdir -p "$dir"
    printf '{ "private": true, "dependencies": { "playwright-core": "%s" } }\n' "$version" >"$dir/package.json"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$dir" --no-audit --no-fund --silent >&2
fi
flock -u 9
echo "$dir/node_modules"
