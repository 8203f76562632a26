#!/usr/bin/env python3
"""Import cycles between the modules of one crate.

Reads every `crate::a::...` path in `SRC/**/*.rs` (use lines and inline paths alike; comments
skipped), maps each file to its top-level module (`src/foo.rs` and `src/foo/**` are `foo`), and
prints the strongly connected components with more than one module. Exits 1 when a component is
not in the allowed list given with --allow a,b (one pair per flag).
"""
import argparse
import pathlib
import re
import sys

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\};", re.S)


def top_module(src: pathlib.Path, file: pathlib.Path) -> str:
    rel = file.relative_to(src)
    first = rel.parts[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def cfg_test_free(text: str) -> str:
    # Drop `#[cfg(test)] mod ... { ... }` blocks: tests may import what they like.
    out, i = [], 0
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text[i:])
        if not m:
            out.append(text[i:])
            return "".join(out)
        start = i + m.start()
        out.append(text[i:start])
        depth, j = 0, i + m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1


def graph(src: pathlib.Path) -> dict:
    edges = {}
    for file in sorted(src.rglob("*.rs")):
        if file.name == "tests.rs" or "tests" in file.relative_to(src).parts[:-1]:
            continue
        me = top_module(src, file)
        if me in ("lib", "main"):
            continue
        text = cfg_test_free(strip_comments(file.read_text()))
        targets = set(PATH.findall(text))
        for group in USE_GROUP.findall(text):
            for item in group.split(","):
                name = item.strip().split("::", 1)[0].strip("{ }\n")
                if re.fullmatch(r"[a-z_][a-z0-9_]*", name or ""):
                    targets.add(name)
        edges.setdefault(me, set()).update(t for t in targets if t != me and t != "self")
    return edges


def components(edges: dict) -> list:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("src", type=pathlib.Path)
    parser.add_argument("--allow", action="append", default=[])
    args = parser.parse_args()
    allowed = [sorted(a.split(",")) for a in args.allow]
    bad = 0
    for comp in components(graph(args.src)):
        ok = comp in allowed
        bad += not ok
        print(("allowed " if ok else "CYCLE   ") + " <-> ".join(comp))
    if not bad:
        print(f"{args.src}: no import cycle" + (" beyond the allowed ones" if allowed else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
