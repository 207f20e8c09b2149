#!/usr/bin/env python3
"""The code's shape, checked (issue 14): no function in src/ longer than
MAX_FN_LINES, and no two top-level modules importing each other, directly
or through others (the module graph is acyclic), with the lower layers
importing nothing from the upper ones.

A top-level module is `src/NAME.rs` or `src/NAME/`; it "imports" another
when its code names `crate::OTHER` (use lines and paths alike; `super::`
inside a module stays inside it). Function length counts the lines from
`fn` to its closing brace, comments and blank lines included.

Usage: scripts/check_shape.py [--report]   (exit 1 on a violation)
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_FN_LINES = 120
# Lower layers may not import these (DESIGN: the loop, the service and the
# CLI sit on top).
UPPER = {"control", "retrain", "service", "session", "cli"}
LOWER = {"neuron", "plant", "protocol", "forecast", "safety", "policy", "record", "train"}


def strip_comments_and_strings(text):
    """Blank out comments, string and char literals (keeping newlines), so
    braces and `crate::` inside them do not count."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|\\x..|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)  # a lifetime
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def closing_brace(code, k):
    """Index of the brace that closes the one at `k` (or the end)."""
    depth = 0
    while k < len(code):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            depth -= 1
            if depth == 0:
                break
        k += 1
    return k


def without_test_modules(code):
    """The code with `#[cfg(test)] mod NAME { ... }` blocks removed: unit
    tests may build their inputs with anything in the crate (a full
    configuration, say) without making the library depend on it."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", code):
        if m.start() < i:
            continue
        k = closing_brace(code, m.end() - 1)
        out.append(code[i:m.start()])
        i = k + 1
    out.append(code[i:])
    return "".join(out)


def rust_files():
    for d, _, files in os.walk(ROOT):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(d, f)


def top_module(path):
    rel = os.path.relpath(path, ROOT).split(os.sep)
    if len(rel) == 1:
        name = rel[0][:-3]
        return None if name in ("lib", "main") else name
    return rel[0]


FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def long_functions(path, code):
    lines = code.split("\n")
    out = []
    for m in FN.finditer(code):
        # Find the body's opening brace (skip signatures ending in `;`).
        j = m.end()
        depth_paren = 0
        while j < len(code):
            ch = code[j]
            if ch in "([<":
                depth_paren += 1
            elif ch in ")]>":
                depth_paren -= 1
            elif ch == ";" and depth_paren <= 0:
                j = -1
                break
            elif ch == "{" and depth_paren <= 0:
                break
            j += 1
        if j < 0 or j >= len(code):
            continue
        k = closing_brace(code, j)
        start = code.count("\n", 0, m.start()) + 1
        end = code.count("\n", 0, k) + 1
        if end - start + 1 > MAX_FN_LINES:
            out.append((path, start, m.group(1), end - start + 1))
    return out


def main():
    report = "--report" in sys.argv
    graph = {}
    long = []
    for path in rust_files():
        code = strip_comments_and_strings(open(path, encoding="utf-8").read())
        long += long_functions(path, code)
        me = top_module(path)
        if path.endswith("main.rs") or os.sep + "cli" + os.sep in path:
            me = "cli"
        if me is None:
            continue
        graph.setdefault(me, set())
        lib_code = without_test_modules(code)
        for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)", lib_code):
            other = m.group(1)
            if other != me:
                graph[me].add(other)
        if me == "cli":
            for m in re.finditer(r"\bneurostimd::([a-z_][a-z0-9_]*)", lib_code):
                graph[me].add(m.group(1))
    problems = []
    for path, line, name, n in sorted(long, key=lambda x: -x[3]):
        problems.append(f"{os.path.relpath(path, os.path.dirname(ROOT))}:{line}: fn {name} is {n} lines (> {MAX_FN_LINES})")
    # Cycles: strongly connected components of more than one module.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    for comp in sccs:
        edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
        problems.append("import cycle among " + ", ".join(comp) + ": " + "; ".join(edges))
    for low_mod in sorted(LOWER & graph.keys()):
        bad = sorted(graph[low_mod] & UPPER)
        if bad:
            problems.append(f"lower layer `{low_mod}` imports upper layer(s): {', '.join(bad)}")
    if report or problems:
        for m in sorted(graph):
            print(f"{m}: {', '.join(sorted(x for x in graph[m] if x in graph))}")
    for p in problems:
        print(p)
    print(f"{len(long)} functions over {MAX_FN_LINES} lines, {len(sccs)} import cycles")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
