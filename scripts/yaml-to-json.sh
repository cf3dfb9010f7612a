#!/usr/bin/env bash
# Prints YAML files as one JSON array, in argument order, read with PyYAML's safe loader (anchors
# and `<<` merge keys resolved); a file of several documents (`---`) is the array of them.
# PyYAML comes from the repository's .venv (override with WEFT_VENV), installed on first use.
# Used by e2e/tests/compose.rs.
#
#   scripts/yaml-to-json.sh docker-compose.yml deploy/prometheus.yml
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 FILE.yml..." >&2
    exit 2
fi
# shellcheck source=venv.sh
source "$(dirname "$0")/venv.sh"
ensure_python_module yaml 'PyYAML>=6,<7'

"$venv/bin/python" - "$@" <<'PY'
import json
import sys

import yaml

documents = []
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        found = [d for d in yaml.safe_load_all(f) if d is not None]
    documents.append(found[0] if len(found) == 1 else found)
json.dump(documents, sys.stdout)
PY
