#!/usr/bin/env python3
"""Fails when two modules of one crate import each other, directly or through others.

Every `src/` folder of the workspace is a crate; each `*.rs` file directly in it is a module.
A module imports another when its code (comments and `#[cfg(test)] mod tests` excluded) names
`crate::<module>`, alone or in a `use crate::{...}` group. Prints each crate's cycles, if any,
and exits 1 when there is one. `make test` runs it (see ARCHITECTURE.md, "Invariants").
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


def main():
    bad = False
    for src in crate_dirs():
        for component in cycles(imports(src)):
            bad = True
            print(f"{src.parent.relative_to(ROOT)}: modules import each other: {', '.join(component)}")
    if bad:
        return 1
    print("no module imports another that imports it back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
