"""The project's package layers and an AST check that imports only point down.

A module may import its own package and the packages of *lower* layers, never a package of its
own layer or above. Function-level (lazy) imports count too: laziness changes when a dependency
loads, not which way it points. ``python -m tests.layers`` prints the violations.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Top to bottom. One row is one layer; packages on one row may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),                               # the `dgae` command: dispatches to everything below
    ("service", "benchmarks", "deploy"),   # applications: HTTP service, benchmarks, container entrypoint
    ("evaluation",),                       # reconstruction metrics vs steps, model card
    ("training",),                         # recipes, objective, trainer, photo set, metrics
    ("bulk",),                             # dataset encode/decode: sources, shards, local/Ray engines
    ("backends",),                         # runtimes: torch, ONNX Runtime, TensorRT (one orchestration)
    ("export",),                           # ONNX export/validation, TensorRT build, export cache, manifest
    ("formats",),                          # latent files, images, latent shards: what is read and written
    ("dgae",),                             # the model: config, presets, layers, encoder, decoder, sampler, pipeline
    ("kernels",),                          # Triton kernels beside their PyTorch references
    ("dgae_client",),                      # the HTTP client: its own package, imports no project package
)
LEVEL = {pkg: i for i, row in enumerate(LAYERS) for pkg in row}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.imported} ({self.reason})"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def check_file(path: Path, package: str, root: Path = ROOT) -> list[Violation]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = str(path.relative_to(root))
    bad = []
    for line, module in imported_modules(tree):
        top = module.split(".")[0]
        if top == package or top not in LEVEL:
            continue
        if LEVEL[top] <= LEVEL[package]:
            where = "the same layer" if LEVEL[top] == LEVEL[package] else "a higher layer"
            bad.append(Violation(rel, line, module, f"{top} is {where} as {package}" if where == "the same layer" else f"{top} is {where} than {package}"))
    return bad


def violations(root: Path = ROOT) -> list[Violation]:
    out = []
    for package in LEVEL:
        for path in sorted((root / package).rglob("*.py")):
            out += check_file(path, package, root)
    return out


if __name__ == "__main__":  # pragma: no cover
    found = violations()
    print("\n".join(map(str, found)) or "imports point down")
    sys.exit(1 if found else 0)
