#!/usr/bin/env python3
"""Checks the shape of src/ that docs/architecture.md promises, and prints what breaks it:

1. imports run one way: each top-level module uses only the modules below it;
2. no two modules import each other, at any depth (a parent declaring its children is not an import);
3. no function is over 80 lines (tests excluded);
4. no `Result<_, String>` outside clap value parsers.

Exits 1 when any check fails. Run by scripts/test.sh; `scripts/check-layout.py --lengths 50`
lists the functions over 50 lines instead.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"
MAX_FN_LINES = 80

# Who may import whom: main → cmd → {api, client, worker} → {broker, exec} → {store, sandbox}
# → proto, with `units` and `metrics` leaves any module may use. `client` may use `api`'s wire types.
# `oci` (image archives and their unpacking) is a leaf library of `cmd`, `api`, `worker` and `exec`.
ALLOWED = {
    "cmd": {"oci", "api", "auth", "client", "tls", "worker", "broker", "exec", "store", "sandbox", "proto", "units", "metrics"},
    "api": {"oci", "auth", "broker", "exec", "store", "proto", "units", "metrics"},
    "auth": {"store", "proto", "units", "metrics"},
    "client": {"api", "auth", "tls", "proto", "units", "metrics"},
    "worker": {"oci", "exec", "proto", "units", "metrics"},
    "broker": {"store", "proto", "units", "metrics"},
    "exec": {"oci", "sandbox", "proto", "units", "metrics"},
    "store": {"proto", "units", "metrics"},
    "sandbox": {"proto", "units", "metrics"},
    "proto": set(),
    "tls": set(),
    "oci": set(),
    "units": set(),
    "metrics": set(),
}

FN_RE = re.compile(
    r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)'
)


def code_lines(path):
    """The file's lines up to its test module (by convention the last item of a file)."""
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if re.match(r"^\s*#\[cfg\(test\)\]", line):
            return lines[:i]
    return lines


def strip(line):
    """A line without comments, string and char literals (enough to count braces)."""
    line = re.sub(r"//.*", "", line)
    line = re.sub(r"'(\\.|[^'\\])'", "", line)
    return re.sub(r'"(\\.|[^"\\])*"', '""', line)


def top_module(path):
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".rs")


def functions(path):
    """(name, first line, length) of each function with a body."""
    lines = code_lines(path)
    for i, line in enumerate(lines):
        m = FN_RE.match(line)
        if not m:
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            s = strip(lines[j])
            if not started and ";" in s and "{" not in s:
                break
            for ch in s:
                if ch == "{":
                    depth += 1
                    started = True
                elif ch == "}":
                    depth -= 1
            if started and depth == 0:
                yield m.group(7), i + 1, j - i + 1
                break


def check_imports(files):
    problems = []
    for path in files:
        module = top_module(path)
        if module in ("main", "lib"):
            continue
        text = "\n".join(strip(line) for line in code_lines(path))
        wrong = set()
        for root, used_path in used_paths(text):
            used = used_path.split("::")[0]
            if root == "crate" and used in ALLOWED and used != module:
                if used not in ALLOWED[module]:
                    wrong.add(used)
        for used in sorted(wrong):
            problems.append(f"{path.relative_to(ROOT.parent)}: {module} imports {used}")
    return problems


def node_of(path):
    """A file's module path: `sandbox/zygote` for src/sandbox/zygote/mod.rs."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return tuple(parts[:-1]) if parts[-1] == "mod" else tuple(parts)


def resolve(parts, modules):
    """The longest prefix of `parts` that names a module."""
    for n in range(len(parts), 0, -1):
        if tuple(parts[:n]) in modules:
            return tuple(parts[:n])
    return None


def used_paths(text):
    """Every `crate::a::b` and `super::a` path in `text`, with `{x, y::z}` groups expanded."""
    for root, prefix, group in re.findall(r"\b(crate|super)::((?:\w+::)*)\{([^}]*)\}", text):
        for item in group.split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                yield root, prefix + item
            elif item == "self":
                yield root, prefix
    for root, rest in re.findall(r"\b(crate|super)::((?:\w+::)*\w+)", text):
        yield root, rest


def check_cycles(files):
    modules = {node_of(p) for p in files}
    edges = set()
    for path in files:
        node = node_of(path)
        text = "\n".join(strip(line) for line in code_lines(path))
        for root, path_text in used_paths(text):
            base = [] if root == "crate" else list(node[:-1])
            target = resolve(base + [p for p in path_text.split("::") if p], modules)
            if target is not None:
                common = 0
                while common < min(len(node), len(target)) and node[common] == target[common]:
                    common += 1
                if common < len(node) and common < len(target):
                    edges.add((node[: common + 1], target[: common + 1]))
    problems = []
    for a, b in sorted(edges):
        if (b, a) in edges and a < b:
            problems.append(f"{'/'.join(a)} and {'/'.join(b)} import each other")
    return problems


def check_lengths(files, limit):
    found = []
    for path in files:
        for name, line, length in functions(path):
            if length > limit:
                found.append((length, f"{path.relative_to(ROOT.parent)}:{line} {name}"))
    return [f"{where}: {length} lines" for length, where in sorted(found, reverse=True)]


def check_string_errors(files):
    parsers = set()
    for path in files:
        parsers.update(re.findall(r"value_parser\s*=\s*(?:[\w:]*::)?(\w+)", path.read_text()))
    problems = []
    for path in files:
        current = None
        for n, line in enumerate(code_lines(path), 1):
            m = FN_RE.match(line)
            if m:
                current = m.group(7)
            stringly = re.search(r"Result<[^;{]*,\s*String>|type\s+Err\s*=\s*String\b", strip(line))
            if stringly and current not in parsers:
                problems.append(f"{path.relative_to(ROOT.parent)}:{n}: Result<_, String> in {current}")
    return problems


def main():
    files = sorted(ROOT.rglob("*.rs"))
    if len(sys.argv) == 3 and sys.argv[1] == "--lengths":
        print("\n".join(check_lengths(files, int(sys.argv[2]))))
        return 0
    failed = False
    for title, problems in [
        ("imports that run the wrong way", check_imports(files)),
        ("modules that import each other", check_cycles(files)),
        (f"functions over {MAX_FN_LINES} lines", check_lengths(files, MAX_FN_LINES)),
        ("Result<_, String> outside clap value parsers", check_string_errors(files)),
    ]:
        if problems:
            failed = True
            print(f"layout: {title}:")
            for p in problems:
                print(f"  {p}")
    if not failed:
        print("layout: imports one way, no import cycles, functions within 80 lines, typed errors")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
