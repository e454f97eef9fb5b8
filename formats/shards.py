"""Latent datasets on disk (what ``dgae encode-dataset`` writes) and :class:`LatentDataset` to read
them back for training.

An output folder holds::

    dataset.json              the run: format version, model config, checkpoint sha256, latent
                              scale/shift, preprocessing, what is stored, and every shard with its
                              sample count, size and sha256
    manifest.jsonl|.parquet   one row per sample: key, source, label, original size, preprocessing,
                              checkpoint sha256, latent scale/shift, shard and shard sha256
    errors.jsonl              one row per input that could not be used, with the reason
    shards/shard-000000.tar   WebDataset tar: per sample <key>.safetensors (tensors + the encode
                              metadata ``dgae decode`` reads), <key>.json (the record), <key>.cls
    shards/shard-000000.safetensors   or one safetensors file per shard: tensors <key>/<field>

What a sample stores (``store``): ``mean`` or ``sample``: public latents ``latents`` [c, h, w], the
values ``dgae encode --mode mean|sample`` gives; ``moments``: the *raw* posterior ``mean`` and
``logvar``, so a reader can draw a new latent each epoch (public = (z - shift) * scale, with the
config recorded in dataset.json). With ``flip`` every field also has a ``<field>_flip`` twin:
the same image mirrored left-right (MAR's ``moments_flip``).

Everything written here is byte-deterministic (sorted JSON, tar members with zero mtime/owner),
so the same inputs and options give the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dgae.config import DGAEConfig
from dgae.errors import ConfigError, InputError
from dgae.hashing import file_sha256
from .latents import LATENTS_KEY, META_KEY
from dgae.pipeline import sample_posterior, to_public
from dgae.sampler import SEED_BITS

FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
MANIFEST_STEM = "manifest"
MANIFEST_FORMATS = ("jsonl", "parquet")
ERRORS_FILE = "errors.jsonl"
SHARDS_DIR = "shards"
SHARD_FORMATS = {"wds": ".tar", "safetensors": ".safetensors"}
SHARD_INDEX_DIGITS = 6
STORE_MODES = ("mean", "moments", "sample")
MEAN, LOGVAR = "mean", "logvar"
FLIP_SUFFIX = "_flip"
FLIP_MODES = ("none", "flipped", "random", "both")
# WebDataset member extensions (a WebDataset key is the member name up to its first dot)
TENSORS_EXT, RECORD_EXT, LABEL_EXT = "safetensors", "json", "cls"
SHARD_META_KEY = "dgae_shard"
KEY_STEM_MAX = 80
KEY_HASH_CHARS = 12
SEED_BYTES = 8
SAFETENSORS_HEADER_LEN_BYTES = 8  # little-endian u64 before the JSON header
TAR_FILE_MODE = 0o644


# --- keys and seeds ------------------------------------------------------------------------------
def sample_key(source_id: str) -> str:
    """A stable id from a source path (relative to the source root, or ``tar:member``): readable
    stem plus a hash of the full id, no dots (WebDataset splits keys at the first one)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(source_id)[0]).strip("_") or "sample"
    return f"{stem[-KEY_STEM_MAX:]}-{hashlib.sha256(source_id.encode()).hexdigest()[:KEY_HASH_CHARS]}"


def key_seed(key: str, salt: str | int = 0) -> int:
    """A seed in [0, 2**63) derived from a sample key (and a salt): reruns draw the same noise."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:SEED_BYTES], "little") & ((1 << SEED_BITS) - 1)


def shard_name(index: int, shard_format: str) -> str:
    if shard_format not in SHARD_FORMATS:
        raise InputError(f"shard format must be one of {', '.join(SHARD_FORMATS)}, got {shard_format!r}")
    return f"shard-{index:0{SHARD_INDEX_DIGITS}d}{SHARD_FORMATS[shard_format]}"


def stored_fields(store: str, flip: bool) -> tuple[str, ...]:
    if store not in STORE_MODES:
        raise InputError(f"store must be one of {', '.join(STORE_MODES)}, got {store!r}")
    base = (MEAN, LOGVAR) if store == "moments" else (LATENTS_KEY,)
    return base + tuple(f + FLIP_SUFFIX for f in base) if flip else base


def dumps(obj: Any) -> str:
    """The one JSON spelling of everything written (sorted keys, compact): byte-deterministic."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# --- writing shards ------------------------------------------------------------------------------
@dataclass
class SampleOut:
    """One sample as written: tensors by field name, its record and the encode metadata."""

    key: str
    tensors: dict[str, torch.Tensor]
    record: dict[str, Any]
    encode_meta: dict[str, Any] = field(default_factory=dict)


def sample_tensors_bytes(tensors: dict[str, torch.Tensor], encode_meta: dict[str, Any]) -> bytes:
    """One sample's safetensors file: its fields, and the metadata ``dgae decode`` reads."""
    return st_save({k: v.contiguous().cpu() for k, v in tensors.items()}, metadata={META_KEY: dumps(encode_meta)})


def pack_tar(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A tar of (name, bytes) with fixed mtime, owner and mode: the same members, the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, TAR_FILE_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_bytes(samples: Sequence[SampleOut], shard_format: str) -> bytes:
    if shard_format == "wds":
        members = []
        for s in samples:
            members.append((f"{s.key}.{TENSORS_EXT}", sample_tensors_bytes(s.tensors, s.encode_meta)))
            members.append((f"{s.key}.{RECORD_EXT}", dumps(s.record).encode()))
            if s.record.get("label") is not None:
                members.append((f"{s.key}.{LABEL_EXT}", str(s.record["label"]).encode()))
        return pack_tar(members)
    if shard_format == "safetensors":
        tensors = {f"{s.key}/{name}": t.contiguous().cpu() for s in samples for name, t in s.tensors.items()}
        meta = [{"record": s.record, "encode": s.encode_meta} for s in samples]
        return st_save(tensors, metadata={SHARD_META_KEY: dumps(meta)})
    raise InputError(f"shard format must be one of {', '.join(SHARD_FORMATS)}, got {shard_format!r}")


# --- reading shards ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredSample:
    key: str
    record: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    encode_meta: dict[str, Any]


@dataclass(frozen=True)
class _Locator:
    """Where one sample lives: a shard and, for tar shards, the byte ranges of its members."""

    shard: Path
    key: str
    members: tuple[tuple[str, int, int], ...] = ()  # (extension, offset, size)
    meta_json: str = ""  # safetensors shards: the sample's {"record", "encode"} entry


def _index_tar(path: Path) -> list[_Locator]:
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if m.isfile():
                    key, _, ext = m.name.partition(".")
                    groups.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{path}: not a readable tar shard ({exc})") from exc
    return [_Locator(path, key, tuple((ext, off, size) for ext, (off, size) in sorted(members.items())))
            for key, members in groups.items()]


def _read_safetensors_meta(path: Path) -> list[dict]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get(SHARD_META_KEY, "null"))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable safetensors shard ({exc})") from exc
    if not isinstance(meta, list):
        raise InputError(f"{path}: safetensors shard without '{SHARD_META_KEY}' metadata")
    return meta


def _index_shard(path: Path) -> list[_Locator]:
    if path.suffix == SHARD_FORMATS["wds"]:
        return _index_tar(path)
    return [_Locator(path, m["record"]["key"], meta_json=dumps(m)) for m in _read_safetensors_meta(path)]


def _read_range(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise InputError(f"{path}: truncated shard")
    return data


def _load_located(loc: _Locator) -> StoredSample:
    if loc.shard.suffix == SHARD_FORMATS["wds"]:
        parts = {ext: _read_range(loc.shard, off, size) for ext, off, size in loc.members}
        if TENSORS_EXT not in parts or RECORD_EXT not in parts:
            raise InputError(f"{loc.shard}: sample {loc.key} lacks its .{TENSORS_EXT} or .{RECORD_EXT} member")
        raw = parts[TENSORS_EXT]
        try:
            tensors = st_load(raw)
            end = SAFETENSORS_HEADER_LEN_BYTES + int.from_bytes(raw[:SAFETENSORS_HEADER_LEN_BYTES], "little")
            header = json.loads(raw[SAFETENSORS_HEADER_LEN_BYTES:end])
            record = json.loads(parts[RECORD_EXT])
        except (SafetensorError, ValueError) as exc:
            raise InputError(f"{loc.shard}: sample {loc.key} is malformed ({exc})") from exc
        meta = json.loads((header.get("__metadata__") or {}).get(META_KEY, "{}"))
        return StoredSample(loc.key, record, tensors, meta)
    prefix = f"{loc.key}/"
    with safe_open(str(loc.shard), framework="pt") as fh:
        tensors = {name[len(prefix):]: fh.get_tensor(name) for name in fh.keys() if name.startswith(prefix)}
    entry = json.loads(loc.meta_json)
    return StoredSample(loc.key, entry["record"], tensors, entry["encode"])


def read_shard(path: str | os.PathLike) -> list[StoredSample]:
    """Every sample of one shard, in order."""
    return [_load_located(loc) for loc in _index_shard(Path(path))]


def read_dataset_info(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / DATASET_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{root}: no {DATASET_FILE}: not a finished 'dgae encode-dataset' output") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format version {info.get('format_version') if isinstance(info, dict) else None} "
                         f"is not {FORMAT_VERSION}")
    return info


# --- LatentDataset -------------------------------------------------------------------------------
class LatentDataset(torch.utils.data.Dataset):
    """Map-style reader of an ``encode-dataset`` output folder.

    ``flip``: ``none`` (the image as encoded), ``flipped`` (its mirror), ``random`` (either, per
    item and epoch; MAR's augmentation) or ``both`` (twice the length: item i, then its mirror).
    ``sample``: with ``store=moments``, draw z = mean + std * noise per access (public scale);
    ``seed`` makes that noise and the random flips a function of (seed, epoch, key), None draws
    fresh ones. Items are dicts: ``key``, ``latents`` [c, h, w] float32, ``label``, ``flipped``,
    ``record`` (the sample's manifest record).
    """

    def __init__(self, root: str | os.PathLike, flip: str = "none", sample: bool = False,
                 seed: int | None = None, verify: bool = False):
        if flip not in FLIP_MODES:
            raise InputError(f"flip must be one of {', '.join(FLIP_MODES)}, got {flip!r}")
        self.root = Path(root)
        self.info = read_dataset_info(self.root)
        try:
            self.config = DGAEConfig.from_dict(self.info["config"])
        except (KeyError, TypeError, ConfigError) as exc:
            raise InputError(f"{self.root / DATASET_FILE}: bad model config ({exc})") from exc
        self.store = self.info["store"]
        if flip != "none" and not self.info["preprocessing"].get("flip"):
            raise InputError(f"flip={flip!r} needs a dataset encoded with --flip")
        if sample and self.store != "moments":
            raise InputError(f"sample=True resamples from moments; this dataset stores {self.store!r} "
                             f"(encode with --store moments)")
        self.flip, self.sample, self.seed, self.epoch = flip, sample, seed, 0
        shards = [self.root / SHARDS_DIR / s["name"] for s in self.info["shards"]]
        if verify:
            for s, path in zip(self.info["shards"], shards):
                if file_sha256(path) != s["sha256"]:
                    raise InputError(f"{path}: sha256 does not match {DATASET_FILE}")
        self._locators = [loc for path in shards for loc in _index_shard(path)]

    def __len__(self) -> int:
        return len(self._locators) * (2 if self.flip == "both" else 1)

    def set_epoch(self, epoch: int) -> None:
        """Random flips and resampled noise change with the epoch (when ``seed`` is set)."""
        self.epoch = int(epoch)

    def _base(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return index // 2 if self.flip == "both" else index

    def key(self, index: int) -> str:
        return self._locators[self._base(index)].key

    def is_flipped(self, index: int) -> bool:
        if self.flip == "both":
            return index % len(self) % 2 == 1
        if self.flip == "random":
            bit = key_seed(self.key(index), f"flip:{self.seed}:{self.epoch}") if self.seed is not None \
                else secrets.randbits(1)
            return bool(bit & 1)
        return self.flip == "flipped"

    def sample_seed(self, index: int) -> int:
        """The noise seed item ``index`` resamples with (``dgae encode --mode sample --seed`` it)."""
        if self.seed is None:
            return secrets.randbits(SEED_BITS)
        return key_seed(self.key(index), f"sample:{self.seed}:{self.epoch}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        stored = _load_located(self._locators[self._base(index)])
        flipped = self.is_flipped(index)
        suffix = FLIP_SUFFIX if flipped else ""
        if self.store == "moments":
            mean, logvar = stored.tensors[MEAN + suffix].float(), stored.tensors[LOGVAR + suffix].float()
            z = sample_posterior(mean[None], logvar[None], [self.sample_seed(index)])[0] if self.sample else mean
            latents = to_public(self.config, z)
        else:
            latents = stored.tensors[LATENTS_KEY + suffix].float()
        return {"key": stored.key, "latents": latents, "label": stored.record.get("label"),
                "flipped": flipped, "record": stored.record}

    def iterable(self, shuffle: bool = False) -> "IterableLatentDataset":
        return IterableLatentDataset(self, shuffle)


class IterableLatentDataset(torch.utils.data.IterableDataset):
    """Streams a :class:`LatentDataset` in shard order, each DataLoader worker (and each
    ``torch.distributed`` rank) taking its own items. ``shuffle`` permutes items per epoch with
    the dataset's seed (0 when unset: every worker must agree on the order)."""

    def __init__(self, dataset: LatentDataset, shuffle: bool = False):
        self.dataset, self.shuffle = dataset, shuffle

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _order(self) -> list[int]:
        order = list(range(len(self.dataset)))
        if self.shuffle:
            gen = torch.Generator().manual_seed(key_seed(f"epoch:{self.dataset.epoch}", self.dataset.seed or 0))
            order = torch.randperm(len(order), generator=gen).tolist()
        return order

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        n_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        part, parts = rank * n_workers + worker_id, world * n_workers
        for i, index in enumerate(self._order()):
            if i % parts == part:
                yield self.dataset[index]
