#!/usr/bin/env python3
"""Every MALL_* and OTEL_* variable the code or the local launcher reads is in docs/configuration.md.

Read in code: a string literal naming the variable in a crate's src/ (the settings readers take
the name as a literal); in the launcher: a `${MALL_...` expansion. Exits 1 naming what is
missing.
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parents[2]
doc = (root / "docs/configuration.md").read_text()
documented = set(re.findall(r"\b((?:MALL|OTEL)_[A-Z0-9_]*[A-Z0-9])\b", doc))
read = {}
for crate in ("common", "testkit", "gateway", "product", "inventory", "order", "flashsale"):
    for path in (root / crate / "src").rglob("*.rs"):
        for name in re.findall(r'"((?:MALL|OTEL)_[A-Z0-9_]*[A-Z0-9])"', path.read_text()):
            read.setdefault(name, path.relative_to(root))
launcher = root / "deploy/local/mall"
for name in re.findall(r"\$\{(MALL_[A-Z0-9_]*[A-Z0-9])", launcher.read_text()):
    read.setdefault(name, launcher.relative_to(root))
missing = sorted(set(read) - documented)
for name in missing:
    print(f"{name} (read in {read[name]}) is not in docs/configuration.md", file=sys.stderr)
print(f"{len(read)} variables read, {len(read) - len(missing)} documented")
sys.exit(1 if missing else 0)
