"""The project's package layers and AST checks that imports only point down and never go round.

1. Layers: a module may import its own package and the packages of *lower* layers, never a package
   of its own layer or above. ``scripts/`` and ``docker/`` are checked too, as the top layer.
2. Sub-layers inside a package (``service``: the app, then the protocol adapters, then the
   protocol-neutral core): adapters are siblings and import only the core, never each other.
3. No import circle between any two files (modules), whatever their layers.

Function-level (lazy) imports count in all three: laziness changes when a dependency loads, not
which way it points. ``python -m tests.layers`` prints what it finds.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Top to bottom. One row is one layer; packages on one row may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("scripts", "docker"),                 # maintenance scripts, the container's helper scripts
    ("cli",),                              # the `dgae` command: every subcommand in cli/commands/
    ("service", "benchmarks", "deploy"),   # applications: HTTP/gRPC service, benchmarks, container entrypoint
    ("evaluation",),                       # reconstruction metrics vs steps, model card
    ("training",),                         # recipes, objective, trainer, photo set, metrics
    ("bulk",),                             # dataset encode/decode: sources, shards, local/Ray engines
    ("backends",),                         # runtimes: torch, ONNX Runtime, TensorRT (one orchestration)
    ("export",),                           # ONNX export/validation, TensorRT build, export cache, manifest
    ("dgae_diffusers",),                   # AutoencoderDGAE: the model as a diffusers autoencoder
    ("formats",),                          # latent files, images, latent shards: what is read and written
    ("dgae",),                             # the model: config, presets, layers, encoder, decoder, sampler, pipeline
    ("kernels",),                          # Triton kernels beside their PyTorch references
    ("dgae_client",),                      # the HTTP client: its own package, imports no project package
)
LEVEL = {pkg: i for i, row in enumerate(LAYERS) for pkg in row}
SCRIPT_DIRS = ("scripts", "docker")  # folders of scripts, not packages

# Inside a package: top to bottom, each row a set of sibling subpackages / modules.
SUBLAYERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "service": (
        ("app",),                                                  # composition: the app and its lifespan
        ("jobs",),                                                 # the native protocol run as jobs (same bodies,
                                                                   # parameters and answers as /encode, /decode)
        ("native", "v2", "remote", "grpc_oip", "playground"),      # protocol adapters and the page: siblings
        ("core",),                                               # protocol-neutral core
    ),
}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.imported} ({self.reason})"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str = "", is_package: bool = False,
                     with_names: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every import; relative ones resolved against ``module``.
    ``with_names``: also ``base.name`` for each ``from base import name`` (it may be a submodule)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                base = ".".join(pkg + ([node.module] if node.module else []))
            if not base:
                continue
            out.append((node.lineno, base))
            if with_names:
                out += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _parse(path: Path, root: Path, with_names: bool = False) -> tuple[str, list[tuple[int, str]]]:
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    return module, imported_modules(tree, module, path.name == "__init__.py", with_names)


def module_exists(dotted: str, root: Path = ROOT) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def check_file(path: Path, package: str, root: Path = ROOT) -> list[Violation]:
    module, imports = _parse(path, root)
    rel = str(path.relative_to(root))
    bad = []
    for line, imported in imports:
        top = imported.split(".")[0]
        if top == package:
            bad += _sublayer_violation(rel, line, module, imported, package)
            continue
        if top not in LEVEL:
            continue
        if LEVEL[top] <= LEVEL[package]:
            if LEVEL[top] == LEVEL[package]:
                bad.append(Violation(rel, line, imported, f"{top} is the same layer as {package}"))
            else:
                bad.append(Violation(rel, line, imported, f"{top} is a higher layer than {package}"))
    return bad


def missing_imports(path: Path, package: str, root: Path = ROOT) -> list[Violation]:
    """Imports of the file's own package that name no module and no name of a package's __init__
    (what a move leaves behind: ``from . import roofline`` after roofline.py moved away)."""
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    rel, bad = str(path.relative_to(root)), []
    for line, imported in imported_modules(tree, module, path.name == "__init__.py", with_names=True):
        if imported.split(".")[0] != package or module_exists(imported, root):
            continue
        parent = imported.rsplit(".", 1)[0]
        init = root.joinpath(*parent.split(".")) / "__init__.py"
        name = imported.rsplit(".", 1)[-1]
        if module_exists(parent, root) and not init.is_file():
            continue  # `from pkg.module import name`: a name inside an existing module
        if init.is_file() and name in init.read_text():
            continue  # a name the package's __init__ defines or re-exports
        bad.append(Violation(rel, line, imported, "no such module (a move left this import behind?)"))
    return bad


def _sublevel(package: str, dotted: str) -> tuple[int, str] | None:
    parts = dotted.split(".")
    if len(parts) < 2:
        return None
    for i, row in enumerate(SUBLAYERS.get(package, ())):
        if parts[1] in row:
            return i, parts[1]
    return None


def _sublayer_violation(rel: str, line: int, module: str, imported: str, package: str) -> list[Violation]:
    mine, theirs = _sublevel(package, module), _sublevel(package, imported)
    if mine is None or theirs is None or mine[1] == theirs[1]:
        return []
    if theirs[0] < mine[0]:
        return [Violation(rel, line, imported, f"{package}.{theirs[1]} is above {package}.{mine[1]}")]
    if theirs[0] == mine[0]:
        return [Violation(rel, line, imported, f"{package}.{theirs[1]} and {package}.{mine[1]} are siblings")]
    return []


def source_files(root: Path = ROOT) -> list[tuple[Path, str]]:
    """(file, its layer's package) for every checked Python file."""
    out = []
    for package in LEVEL:
        out += [(path, package) for path in sorted((root / package).rglob("*.py"))]
    return out


def violations(root: Path = ROOT) -> list[Violation]:
    out = []
    for path, package in source_files(root):
        if package in SCRIPT_DIRS:  # scripts are the top layer: only same-layer imports would matter
            continue
        out += check_file(path, package, root) + missing_imports(path, package, root)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports (lazily or not)."""
    parsed = {}
    for path, _ in source_files(root):
        module, imports = _parse(path, root, with_names=True)
        parsed[module] = imports
    graph = {}
    for module, imports in parsed.items():
        graph[module] = {m for _, m in imports if m in parsed and m != module and not module.startswith(m + ".")}
    return graph


def cycles(root: Path = ROOT) -> list[list[str]]:
    """Every import circle between modules: the strongly connected components of more than one
    module (Tarjan's algorithm, iterative)."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


if __name__ == "__main__":  # pragma: no cover
    found = violations()
    circles = cycles()
    print("\n".join(map(str, found)) or "imports point down")
    print("\n".join(" <-> ".join(c) for c in circles) or "no import circle")
    sys.exit(1 if found or circles else 0)
