"""Test-wide setup.

``TRITON_INTERPRET=1`` must be in the environment before anything imports triton (Triton reads
it when kernels are decorated), so it is set here, at the top of the root conftest, before any
test module is collected. ``setdefault`` lets a GPU host run with ``TRITON_INTERPRET=0``.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random-init checkpoint of the tiny preset (seeded)."""
    from dgae.checkpoint import save_checkpoint
    from dgae.model import DGAE
    from dgae.presets import get_preset

    torch.manual_seed(0)
    model = DGAE(get_preset("tiny"))
    # Random init leaves zero-initialised output layers: perturb them so decode depends on inputs.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0 and "norm" not in name:
                p.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(model, path)
    return path


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    from dgae.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """Apps under test set torch_threads (process-wide): every module gets the default back after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
