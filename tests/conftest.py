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


@pytest.fixture(scope="session")
def gradient_photos(tmp_path_factory):
    """A small synthetic photo set with a train/val manifest (tests/photo_cases.py); read-only."""
    from photo_cases import make_photo_set

    root = tmp_path_factory.mktemp("gradient_photos")
    make_photo_set(root)
    return root


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


# Modules that build the ONNX export, drive containers, browsers, nginx, Ray or training runs, or decode
# at large sizes: part of `make test`, left out of `make test-fast` (the inner loop, <= 3 min on 2 cores).
SLOW_MODULES = frozenset({
    "test_any_resolution_server", "test_backends_factory", "test_backends_onnxruntime", "test_bench_anchors",
    "test_bench_backends", "test_bench_gpu_suite", "test_bench_load", "test_bench_sizes", "test_bulk",
    "test_data_fetch", "test_default_backend", "test_deploy_entrypoint", "test_distill", "test_docker_files",
    "test_docker_smoke", "test_eval", "test_export_cache", "test_export_manifest", "test_export_onnx",
    "test_export_tensorrt_config", "test_image_quality", "test_int8_probe", "test_kernels_benchmark_dry_run",
    "test_kernels_model_parity", "test_kserve_server", "test_nginx_lb", "test_playground_browser",
    "test_service_server", "test_train", "test_client",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
