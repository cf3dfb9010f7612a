#!/usr/bin/env python3
"""Checks two invariants of ARCHITECTURE.md that the compiler does not; exits 1 on a breach.

1. Imports go one way: no two modules of one crate import each other, directly or through
   others. Every `src/` folder of the workspace is a crate; each `*.rs` file directly in it is a
   module. A module imports another when its code (comments and `#[cfg(test)] mod tests`
   excluded) names `crate::<module>`, alone or in a `use crate::{...}` group.
2. The mesh knows no service: the non-test code of `mesh/` and `gateway/` never names one of
   Weft's services (the folders of `services/`): no `weft-<name>`, `weft.<name>.`,
   `<Name>Service`, `/v1/<name>` or `services.<name>`/`upstreams.<name>` key.

`make test` runs it.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIP = {"target", ".git", "node_modules"}


def crate_dirs():
    for cargo in sorted(ROOT.rglob("Cargo.toml")):
        if SKIP & set(cargo.relative_to(ROOT).parts):
            continue
        src = cargo.parent / "src"
        if src.is_dir():
            yield src


def imports(src):
    modules = {f.stem: f for f in src.glob("*.rs")}
    graph = {}
    for name, path in modules.items():
        text = re.split(r"#\[cfg\(test\)\]\s*(?:pub(?:\(crate\))?\s+)?mod tests", path.read_text())[0]
        code = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
        used = set(re.findall(r"crate::([a-z_0-9]+)", code))
        for group in re.findall(r"crate::\{([^;]*?)\};", code, re.S):
            used |= {part.strip().split("::")[0].strip("{} \n") for part in group.split(",")}
        graph[name] = {m for m in used if m in modules and m != name}
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def code_lines(path):
    """The lines of `path` before its unit tests, without comment lines, numbered from 1."""
    text = re.split(r"#\[cfg\(test\)\]\s*(?:pub(?:\(crate\))?\s+)?mod \w+", path.read_text())[0]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip().startswith("//"):
            yield number, line


def service_names_in_plumbing():
    names = sorted(d.name for d in (ROOT / "services").iterdir() if (d / "Cargo.toml").is_file())
    alternatives = "|".join(names)
    capitalised = "|".join(n.capitalize() for n in names)
    pattern = re.compile(
        rf"weft-({alternatives})\b|weft\.({alternatives})\.|\b({capitalised})Service\b"
        rf"|/v1/({alternatives})\b|\b(services|upstreams)\.({alternatives})\b"
    )
    for folder in [ROOT / "mesh", ROOT / "gateway"]:
        for path in sorted(folder.rglob("src/*.rs")):
            if path.name.startswith("test"):
                continue
            for number, line in code_lines(path):
                if pattern.search(line):
                    yield f"{path.relative_to(ROOT)}:{number}: {line.strip()}"


def main():
    bad = False
    for src in crate_dirs():
        for component in cycles(imports(src)):
            bad = True
            print(f"{src.parent.relative_to(ROOT)}: modules import each other: {', '.join(component)}")
    for hit in service_names_in_plumbing():
        bad = True
        print(f"names a service outside services/: {hit}")
    if bad:
        return 1
    print("no module imports another that imports it back; the mesh and the gateway name no service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
