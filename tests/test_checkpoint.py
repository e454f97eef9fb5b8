"""Checkpoint round trip and every bad-checkpoint case: one clear CheckpointError each."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from dgae.checkpoint import BUNDLED_CHECKPOINT, describe, load_checkpoint, read_config, save_checkpoint

from dgae.hashing import file_sha256
from dgae.errors import CheckpointError
from dgae.model import DGAE
from dgae.presets import get_preset


def test_round_trip_exact(tiny_checkpoint, tmp_path):
    model = load_checkpoint(tiny_checkpoint)
    out = save_checkpoint(model, tmp_path / "again.safetensors")
    again = load_checkpoint(out)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert read_config(out) == model.config


def test_fp16_storage_loads_as_fp32(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "h.safetensors", dtype=torch.float16)
    m = load_checkpoint(path)
    w = next(m.parameters())
    assert w.dtype == torch.float32
    ref = next(tiny_model.parameters())
    assert torch.allclose(w, ref, atol=1e-3)


def test_describe_reports_counts_and_sha(tiny_checkpoint):
    d = describe(tiny_checkpoint)
    assert d["sha256"] == file_sha256(tiny_checkpoint) and len(d["sha256"]) == 64
    m = DGAE(get_preset("tiny"))
    assert d["params"]["total"] == sum(p.numel() for p in m.parameters())
    assert d["preset"] == "tiny" and d["downsample_factor"] == 8


def test_truncated_file(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 10):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt|not a readable"):
            load_checkpoint(p)


def test_not_safetensors(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(p)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_not_dgae_safetensors(tmp_path):
    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match="not a DGAE checkpoint"):
        load_checkpoint(p)


def _rewrite(tiny_checkpoint, tmp_path, mutate):
    from safetensors import safe_open
    with safe_open(str(tiny_checkpoint), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    meta, tensors = mutate(dict(meta), tensors)
    p = tmp_path / "mut.safetensors"
    save_file(tensors, str(p), metadata=meta)
    return p


def test_shape_mismatch_names_the_tensor(tiny_checkpoint, tmp_path):
    def mutate(meta, t):
        t["decoder.conv_in.weight"] = torch.zeros(3, 3, 3, 3)
        return meta, t
    with pytest.raises(CheckpointError, match=r"decoder\.conv_in\.weight.*shape"):
        load_checkpoint(_rewrite(tiny_checkpoint, tmp_path, mutate))


def test_missing_and_unexpected_tensor(tiny_checkpoint, tmp_path):
    def drop(meta, t):
        t.pop("encoder.conv_in.bias")
        return meta, t
    with pytest.raises(CheckpointError, match=r"encoder\.conv_in\.bias.*missing"):
        load_checkpoint(_rewrite(tiny_checkpoint, tmp_path, drop))

    def add(meta, t):
        t["extra.thing"] = torch.zeros(1)
        return meta, t
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra.thing'"):
        load_checkpoint(_rewrite(tiny_checkpoint, tmp_path, add))


def test_bad_config_and_version(tiny_checkpoint, tmp_path):
    def bad_cfg(meta, t):
        meta["config"] = json.dumps({"latent_channels": 4, "what": 1})
        return meta, t
    with pytest.raises(CheckpointError, match="unknown field"):
        load_checkpoint(_rewrite(tiny_checkpoint, tmp_path, bad_cfg))

    def future(meta, t):
        meta["format_version"] = "99"
        return meta, t
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(_rewrite(tiny_checkpoint, tmp_path, future))


def test_nan_weights_rejected(tiny_checkpoint, tmp_path):
    def nan(meta, t):
        t["decoder.conv_out.bias"] = torch.full_like(t["decoder.conv_out.bias"], float("nan"))
        return meta, t
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(_rewrite(tiny_checkpoint, tmp_path, nan))


def test_header_length_lie(tmp_path):
    p = tmp_path / "lie.safetensors"
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_superseded_tiling_defaults_read_as_todays_and_chosen_tilings_are_kept():
    from dgae.config import SUPERSEDED_TILINGS, DGAEConfig, TilingConfig

    old = DGAEConfig().to_dict() | {"tiling": dict(SUPERSEDED_TILINGS[0])}
    assert DGAEConfig.from_dict(old).tiling == TilingConfig()
    chosen = DGAEConfig().to_dict() | {"tiling": dict(SUPERSEDED_TILINGS[0], encode_tile=512)}
    assert DGAEConfig.from_dict(chosen).tiling.encode_tile == 512
    assert read_config(BUNDLED_CHECKPOINT).tiling == TilingConfig()  # the bundled checkpoint follows the code
