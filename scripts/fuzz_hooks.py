"""Schemathesis hooks for scripts/fuzz-openapi.sh: what no OpenAPI document can state.

The document states what data each request may carry, and the fuzz holds the mesh to it: a
request that follows the document must not be refused as invalid (INVALID_ARGUMENT, 400). Two
kinds of refusal are not about the data alone, and this hook drops exactly those failures of the
`positive_data_acceptance` check, nothing else:

1. **The resource's state** (`FAILED_PRECONDITION`, gRPC code 9, also 400 by the gRPC-HTTP
   mapping): ordering more units than are in stock, or restocking past the largest stock a
   64-bit integer holds. Whether the same request succeeds depends on what happened before it.
2. **An update mask** (AIP-134), which ties two parts of a request together while OpenAPI
   constrains each part on its own: `PATCH /v1/users/{id}?updateMask=displayName` sets
   `displayName` to the body's value, so with that mask an empty `displayName` is refused (a
   profile needs a name), while the same body with an empty mask changes nothing and is fine.
   Dropped only when every field the BadRequest names is a body field the mask named.
"""

import json
import os
import re

import schemathesis

FAILED_PRECONDITION = 9

# Operations whose update mask names fields of their body, and the body's field name.
UPDATE_MASK_BODIES = {("PATCH", "/v1/users/{id}"): "user"}


def _snake(name):
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _error(response):
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _violations(error):
    return [
        violation.get("field")
        for detail in error.get("details", [])
        if detail.get("@type", "").endswith("google.rpc.BadRequest")
        for violation in detail.get("fieldViolations", [])
    ]


def _masked_fields_refused(case, error):
    body_field = UPDATE_MASK_BODIES.get((case.operation.method.upper(), case.operation.path))
    if body_field is None:
        return False
    mask = (case.query or {}).get("updateMask") or ""
    masked = {f"{body_field}.{_snake(path.strip())}" for path in str(mask).split(",") if path.strip()}
    violations = _violations(error)
    return bool(violations) and all(field in masked for field in violations)


def _record(case, error, why):
    """Appends a dropped failure to $WEFT_FUZZ_DROPPED, when set, for review."""
    path = os.environ.get("WEFT_FUZZ_DROPPED")
    if path:
        line = {
            "why": why,
            "operation": f"{case.operation.method.upper()} {case.operation.path}",
            "query": case.query,
            "message": error.get("message"),
        }
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line, default=str) + "\n")


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep (True) every failure but a refusal that depends on state or on an update mask."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 400:
        return True
    error = _error(response)
    if error.get("code") == FAILED_PRECONDITION:
        _record(case, error, "state")
        return False
    if _masked_fields_refused(case, error):
        _record(case, error, "update mask")
        return False
    return True
