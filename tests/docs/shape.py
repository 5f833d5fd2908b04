#!/usr/bin/env python3
"""The code keeps the shape docs/services.md describes.

- No source file over 400 lines and no function over 80, counting neither `#[cfg(test)]`
  modules nor test files (`tests/`, `testkit/`), which are checked apart: no test file over
  900 lines.
- Every service has config.rs, startup.rs, state.rs and error.rs, and no module imports the
  application state from its HTTP module.
- No import cycle between the modules of a crate (`use crate::...` and `crate::...` paths).

Relies on rustfmt's layout (CI runs `cargo fmt --check` first): a function ends at the first
line that is its indentation followed by `}`. Exits 1 naming every breach.
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parents[2]
CRATES = ("common", "gateway", "product", "inventory", "order", "flashsale")
SERVICES = CRATES[1:]
MAX_FILE, MAX_FN, MAX_TEST_FILE = 400, 80, 900
FN = re.compile(r"^(\s*)(?:pub(?:\([\w:]+\))? )?(?:const )?(?:async )?(?:unsafe )?fn (\w+)")
MOD_OPEN = re.compile(r"^\s*(?:pub(?:\([\w:]+\))? )?mod \w+ \{$")
breaches = []


def without_test_modules(lines):
    """(line number, text) of every line outside `#[cfg(test)] mod ... { }` blocks."""
    kept, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and MOD_OPEN.match(lines[i + 1]):
            indent = line[: len(line) - len(line.lstrip())]
            i += 2
            while i < len(lines) and lines[i] != indent + "}":
                i += 1
            i += 1
            continue
        kept.append((i + 1, line))
        i += 1
    return kept


def long_functions(kept):
    for k, (number, line) in enumerate(kept):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for end_number, end in kept[k + 1 :]:
            if end.startswith(indent + "}") and end.strip() in ("}", "};", "})", "}),", "},"):
                if end_number - number + 1 > MAX_FN:
                    yield m.group(2), number, end_number - number + 1
                break


def module_of(crate, path):
    rel = path.relative_to(root / crate / "src").with_suffix("")
    parts = [p for p in rel.parts if p not in ("lib", "main", "mod")]
    return "::".join(parts)


for crate in CRATES:
    modules = {}
    for path in sorted((root / crate / "src").rglob("*.rs")):
        rel = path.relative_to(root)
        kept = without_test_modules(path.read_text().split("\n"))
        if len(kept) > MAX_FILE:
            breaches.append(f"{rel}: {len(kept)} lines outside tests (at most {MAX_FILE})")
        for name, number, length in long_functions(kept):
            breaches.append(f"{rel}:{number}: fn {name} is {length} lines (at most {MAX_FN})")
        text = "\n".join(line for _, line in kept)
        if re.search(r"crate::http::\w*State\b|use crate::http::\{[^}]*State", text):
            breaches.append(f"{rel}: imports application state from the HTTP module")
        module = module_of(crate, path)
        code = "\n".join(line.split("//")[0] for _, line in kept)
        used = set(re.findall(r"crate::(\w+)", code))
        top = module.split("::")[0] if module else ""
        modules.setdefault(top, set()).update(u for u in used if u != top)
    # Cycles between the crate's top-level modules.
    def reaches(start, goal, seen):
        for nxt in modules.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    for m in sorted(modules):
        if m and reaches(m, m, set()):
            uses = ", ".join(sorted(u for u in modules[m] if reaches(u, m, set())))
            breaches.append(f"{crate}: module `{m}` is part of an import cycle (through {uses})")

for crate in SERVICES:
    for name in ("config.rs", "startup.rs", "state.rs", "error.rs"):
        if not (root / crate / "src" / name).exists():
            breaches.append(f"{crate}/src/{name} is missing")

for path in sorted(root.glob("*/tests/**/*.rs")) + sorted((root / "testkit/src").rglob("*.rs")):
    lines = path.read_text().count("\n")
    if lines > MAX_TEST_FILE:
        breaches.append(f"{path.relative_to(root)}: {lines} lines (test files: at most {MAX_TEST_FILE})")

for b in breaches:
    print(b, file=sys.stderr)
print(f"code shape: {len(breaches)} breaches")
sys.exit(1 if breaches else 0)
