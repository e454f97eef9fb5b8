"""Imports point down (tests/layers.py): service -> backends -> export -> model core -> kernels."""
from __future__ import annotations

import shutil

import pytest

from tests import layers


def test_the_tree_imports_only_downwards():
    found = layers.violations()
    assert not found, "imports that point up or sideways:\n" + "\n".join(map(str, found))


def test_every_package_is_in_a_layer():
    packages = {p.name for p in layers.ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    packages |= set(layers.SCRIPT_DIRS)
    assert packages == set(layers.LEVEL), f"packages without a layer: {sorted(packages - set(layers.LEVEL))}"


@pytest.mark.parametrize("statement", ["import export.manifest", "from service.app import create_app",
                                       "from backends.base import Backend"])
def test_a_model_core_module_importing_upwards_is_caught(tmp_path, statement):
    core = tmp_path / "dgae"
    shutil.copytree(layers.ROOT / "dgae", core)
    model = core / "model.py"
    model.write_text(model.read_text() + f"\n\ndef _late():\n    {statement}\n")  # even a lazy import counts
    found = layers.check_file(model, "dgae", root=tmp_path)
    assert [v.imported for v in found] == [statement.split()[1]]
    assert found[0].file == "dgae/model.py" and "higher layer" in found[0].reason


def test_same_layer_imports_are_caught(tmp_path):
    (tmp_path / "service").mkdir()
    bad = tmp_path / "service" / "x.py"
    bad.write_text("from benchmarks.common import Timer\n")
    assert [v.reason for v in layers.check_file(bad, "service", root=tmp_path)] == \
        ["benchmarks is the same layer as service"]


def test_the_tree_has_no_import_circle():
    found = layers.cycles()
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def _tree(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_deliberate_circle_between_two_files_is_caught(tmp_path):
    root = _tree(tmp_path, {"bulk/__init__.py": "", "bulk/a.py": "from .b import run\n",
                            "bulk/b.py": "def run():\n    from bulk.a import x  # lazy, still a circle\n",
                            "bulk/c.py": "from bulk.a import y\n"})
    assert layers.cycles(root) == [["bulk.a", "bulk.b"]]


def test_a_protocol_adapter_importing_a_sibling_adapter_is_caught(tmp_path):
    root = _tree(tmp_path, {"service/__init__.py": "", "service/v2/__init__.py": "",
                            "service/v2/routes.py": "from ..native.routes import engine\nfrom ..core import codecs\n"})
    found = layers.check_file(root / "service/v2/routes.py", "service", root)
    assert [(v.imported, v.reason) for v in found] == [
        ("service.native.routes", "service.native and service.v2 are siblings")]


def test_the_core_importing_an_adapter_is_caught(tmp_path):
    root = _tree(tmp_path, {"service/core/engine.py": "def f():\n    from service.native import routes\n"})
    found = layers.check_file(root / "service/core/engine.py", "service", root)
    assert [v.reason for v in found] == ["service.native is above service.core"]


def test_scripts_and_docker_are_in_the_layer_check(tmp_path):
    checked = {pkg for _, pkg in layers.source_files()}
    assert {"scripts", "docker"} <= checked
    root = _tree(tmp_path, {"backends/x.py": "import scripts.make_bulk_input\n"})
    assert "higher layer" in layers.check_file(root / "backends/x.py", "backends", root)[0].reason


def test_an_import_of_a_module_that_no_longer_exists_is_caught(tmp_path):
    root = _tree(tmp_path, {"cli/__init__.py": "", "cli/commands/__init__.py": "",
                            "cli/commands/bench.py": "def run():\n    from . import roofline\n"})
    found = layers.missing_imports(root / "cli/commands/bench.py", "cli", root)
    assert [(v.imported, v.reason.split(" (")[0]) for v in found] == [("cli.commands.roofline", "no such module")]
    (root / "cli/commands/roofline.py").write_text("")
    assert not layers.missing_imports(root / "cli/commands/bench.py", "cli", root)
