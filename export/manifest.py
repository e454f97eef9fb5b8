"""The manifest written beside exported ONNX graphs and TensorRT engines (``manifest.json``).

It is what a runtime trusts: which checkpoint (sha256) and preset produced the files, the full
model config (so a runtime needs no checkpoint), opset, precision, exporter versions, and per
graph the file, its sha256, and the input/output names, shapes (ints or symbolic dim names) and
dtypes. TensorRT manifests add ``tensorrt`` (version, GPU, profiles, flags). Reading validates
everything and raises :class:`BackendError` with one line naming the problem.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dgae.hashing import file_sha256
from dgae.config import DGAEConfig
from dgae.errors import BackendError, ConfigError
from dgae.precision import PRECISIONS
from dgae.sampler import SamplePlan

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
KIND_ONNX = "dgae-onnx"
KIND_TENSORRT = "dgae-tensorrt"

# Graph names and their I/O contract (see export/onnx_export.py for the shapes).
ENCODER = "encoder"  # images [B, 3, H, W] -> mean, logvar [B, c, H/f, W/f]
DENOISER = "denoiser"  # x_t [B, 3, H, W], t [B], z [B, c, H, W] (upsampled raw latent) -> v [B, 3, H, W]
UNROLLED = "decode_unrolled"  # noise [B, 3, H, W], z [B, c, H, W] -> image [B, 3, H, W] after N steps
GRAPH_NAMES = (ENCODER, DENOISER, UNROLLED)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # ints are fixed, strings are symbolic dims ("batch", "height", ...)
    dtype: str  # numpy dtype name: "float32", "float16"

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(str(d["name"]), tuple(d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class GraphEntry:
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    extra: dict = field(default_factory=dict)  # unrolled: steps, solver, timesteps

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def plan(self) -> SamplePlan:
        """The sampler plan an unrolled graph integrates (its exported timesteps and solver)."""
        try:
            return SamplePlan(tuple(float(t) for t in self.extra["timesteps"]), str(self.extra["solver"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"graph {self.file}: no valid sampler plan in the manifest ({exc})") from exc

    @classmethod
    def from_dict(cls, d: dict) -> "GraphEntry":
        return cls(str(d["file"]), str(d["sha256"]), tuple(TensorSpec.from_dict(s) for s in d["inputs"]),
                   tuple(TensorSpec.from_dict(s) for s in d["outputs"]), dict(d.get("extra", {})))


@dataclass(frozen=True)
class Manifest:
    kind: str
    checkpoint_sha256: str
    preset: str
    config: dict
    opset: int
    precision: str
    versions: dict  # exporter/runtime package versions
    graphs: dict  # name -> GraphEntry
    validation: list = field(default_factory=list)  # parity report rows (export/validate.py)
    tensorrt: dict = field(default_factory=dict)  # engines only: version, gpu, profiles, flags
    manifest_version: int = MANIFEST_VERSION

    def model_config(self) -> DGAEConfig:
        try:
            return DGAEConfig.from_dict(self.config)
        except ConfigError as exc:
            raise BackendError(f"manifest config is invalid: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["graphs"] = {k: asdict(v) for k, v in self.graphs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        graphs = {str(k): GraphEntry.from_dict(v) for k, v in d["graphs"].items()}
        return cls(kind=str(d["kind"]), checkpoint_sha256=str(d["checkpoint_sha256"]), preset=str(d["preset"]),
                   config=dict(d["config"]), opset=int(d["opset"]), precision=str(d["precision"]),
                   versions=dict(d.get("versions", {})), graphs=graphs, validation=list(d.get("validation", [])),
                   tensorrt=dict(d.get("tensorrt", {})), manifest_version=int(d["manifest_version"]))


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temporary name, then rename)."""
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | os.PathLike, kind: str = KIND_ONNX) -> Manifest:
    """Load and validate ``DIR/manifest.json``; every problem is a one-line :class:`BackendError`."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise BackendError(f"{directory}: not a directory (expected an export from 'dgae export')")
    if not path.is_file():
        raise BackendError(f"{path} missing: {directory} is not a 'dgae export' output directory")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackendError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BackendError(f"{path}: expected a JSON object")
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BackendError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from exc
    if manifest.manifest_version > MANIFEST_VERSION:
        raise BackendError(f"{path}: manifest_version {manifest.manifest_version} is newer than this build "
                           f"reads ({MANIFEST_VERSION}); upgrade dgae or re-export")
    if manifest.kind != kind:
        raise BackendError(f"{path}: is a {manifest.kind!r} manifest, expected {kind!r}")
    if manifest.precision not in PRECISIONS:
        raise BackendError(f"{path}: unknown precision {manifest.precision!r}")
    unknown = set(manifest.graphs) - set(GRAPH_NAMES)
    if unknown:
        raise BackendError(f"{path}: unknown graph(s) {sorted(unknown)}")
    manifest.model_config()  # validates the embedded config
    return manifest


def verify_files(directory: str | os.PathLike, manifest: Manifest, names: list[str] | None = None) -> None:
    """Every listed graph file exists and matches its recorded sha256 (detects truncated/edited files)."""
    for name in names if names is not None else list(manifest.graphs):
        entry = manifest.graphs.get(name)
        if entry is None:
            raise BackendError(f"{directory}: the export has no {name!r} graph (has: {sorted(manifest.graphs)})")
        path = Path(directory) / entry.file
        if not path.is_file():
            raise BackendError(f"{path} missing (listed in {MANIFEST_NAME}); re-export")
        digest = file_sha256(path)
        if digest != entry.sha256:
            raise BackendError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                               f"{entry.sha256[:12]}... (corrupt or replaced); re-export")


def check_checkpoint(manifest: Manifest, checkpoint_sha256: str, directory: str | os.PathLike) -> None:
    """Refuse an export made from another checkpoint than the one the caller asked for."""
    if checkpoint_sha256 and manifest.checkpoint_sha256 != checkpoint_sha256:
        raise BackendError(f"{directory} was exported from checkpoint sha256 {manifest.checkpoint_sha256[:12]}..., "
                           f"not the requested {checkpoint_sha256[:12]}...; re-export with 'dgae export onnx'")
