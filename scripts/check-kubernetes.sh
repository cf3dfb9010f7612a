#!/usr/bin/env bash
# Checks deploy/kubernetes statically (no cluster here): every overlay renders with
# `kubectl kustomize`, the output passes strict schema validation for a current Kubernetes
# (`kubernetes-validate --strict`), and `checkov` finds no failed check (the checks a manifest
# skips carry their reason in a `checkov.io/skip` annotation beside the resource). The Python
# tools come from PyPI into their own virtualenv (.venv-kube; checkov pins packages that the
# other tools' .venv must not share).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null; then
    if [[ "${CI:-}" == "true" ]]; then
        echo "error: kubectl (with kustomize) is needed to render deploy/kubernetes" >&2
        exit 1
    fi
    echo "warning: no kubectl here: deploy/kubernetes not checked" >&2
    exit 0
fi

export WEFT_VENV="${WEFT_KUBE_VENV:-$PWD/.venv-kube}"
# shellcheck source=venv.sh
source scripts/venv.sh
ensure_python_module kubernetes_validate 'kubernetes-validate>=1.31,<2'
ensure_python_module checkov 'checkov>=3.2,<4'

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
for overlay in deploy/kubernetes/overlays/*/; do
    name="$(basename "$overlay")"
    echo "--- $name: kubectl kustomize, kubernetes-validate --strict, checkov"
    kubectl kustomize "$overlay" >"$rendered/$name.yaml"
    "$venv/bin/kubernetes-validate" --strict --quiet "$rendered/$name.yaml"
    "$venv/bin/checkov" --file "$rendered/$name.yaml" --framework kubernetes --compact --quiet \
        --skip-download
done
echo "deploy/kubernetes: every overlay renders, validates and passes checkov"
