#!/usr/bin/env bash
# Validates an OpenAPI document (JSON) as OpenAPI 3.1 with a real validator: the
# `openapi-spec-validator` package from PyPI, installed on first use into the repository's
# .venv (override with WEFT_VENV). Exits non-zero, with the validator's messages, when the
# document is not valid OpenAPI 3.1.
#
#   scripts/validate-openapi.sh openapi.json
#   curl -s localhost:8080/openapi.json > /tmp/o.json && scripts/validate-openapi.sh /tmp/o.json
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OPENAPI.json" >&2
    exit 2
fi
if [[ ! -f "$1" ]]; then
    echo "error: $1: no such file" >&2
    exit 2
fi
# Resolve the file before leaving the caller's directory.
file="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
# shellcheck source=venv.sh
source "$(dirname "$0")/venv.sh"
ensure_python_module openapi_spec_validator 'openapi-spec-validator>=0.7,<1'

"$venv/bin/python" - "$file" <<'PY'
import json
import sys

from openapi_spec_validator import OpenAPIV31SpecValidator

path = sys.argv[1]
try:
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
except (OSError, ValueError) as e:
    print(f"{path}: not readable JSON: {e}", file=sys.stderr)
    sys.exit(1)

version = str(spec.get("openapi", "")) if isinstance(spec, dict) else ""
if not version.startswith("3.1."):
    print(f"{path}: `openapi` is {version!r}, not 3.1.x", file=sys.stderr)
    sys.exit(1)

# Schema errors come first; the semantic checks that follow assume a schema-valid document
# and may crash on a broken one, which only matters when nothing was reported before.
errors = []
try:
    for error in OpenAPIV31SpecValidator(spec).iter_errors():
        where = "/".join(str(p) for p in getattr(error, "absolute_path", [])) or "(document)"
        errors.append(f"{where}: {getattr(error, 'message', error)}")
except Exception as e:  # noqa: BLE001
    if not errors:
        errors.append(f"validator failed: {type(e).__name__}: {e}")
for error in errors:
    print(f"{path}: {error}", file=sys.stderr)
if errors:
    print(f"{path}: {len(errors)} error(s): not valid OpenAPI 3.1", file=sys.stderr)
    sys.exit(1)
print(f"{path}: valid OpenAPI {version}")
PY
