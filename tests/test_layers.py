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
