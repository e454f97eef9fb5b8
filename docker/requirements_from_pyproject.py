"""Print pyproject.toml's dependencies plus the named extras as a pip requirements list.

The Dockerfile installs these before copying the source, so the (large) dependency layer is rebuilt
only when pyproject.toml changes, not on every code change. Standalone on purpose: it runs in the
build stage before the project is there, with nothing but the standard library (Python >= 3.11).

    python requirements_from_pyproject.py pyproject.toml serve,export > requirements.txt
"""
from __future__ import annotations

import sys
import tomllib

USAGE = "usage: requirements_from_pyproject.py PYPROJECT EXTRA[,EXTRA...]"
EXIT_USAGE = 2


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject.get("project", {})
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise KeyError(f"unknown extra(s) {', '.join(unknown)}; pyproject defines {', '.join(sorted(optional))}")
    out: list[str] = []
    for req in [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]:
        if req not in out:
            out.append(req)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    path, extras = argv[0], [e for e in argv[1].split(",") if e]
    try:
        with open(path, "rb") as fh:
            reqs = requirements(tomllib.load(fh), extras)
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
