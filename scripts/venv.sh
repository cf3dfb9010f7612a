# Sourced by the scripts that need Python tools: `ensure_python_module MODULE 'PIP SPEC'` makes
# sure the repository's .venv (override with WEFT_VENV) exists and has MODULE, installing SPEC
# from PyPI on first use, and sets $venv. Tests run in parallel, so a lock lets one bootstrap
# the virtualenv while the others wait.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WEFT_VENV:-$root/.venv}"

ensure_python_module() {
    local module="$1" spec="$2"
    exec 9>"${TMPDIR:-/tmp}/weft-venv.lock"
    flock 9
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c "import $module" >/dev/null 2>&1; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
    fi
    flock -u 9
}
