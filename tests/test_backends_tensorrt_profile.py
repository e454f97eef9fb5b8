"""TensorRT backend shape logic on CPU, with fake engine objects (the TensorRT 10 methods the backend
calls): profiles read from the engine, ``set_input_shape`` results checked, requests outside the
profile tiled or refused with a 4xx naming it, and the service's warm-up inside the profile.

The primitives that need TensorRT (``denoise``, ``encoder_moments``) are replaced by the tiny torch
model in ``ProfiledTorch``, so the real orchestration and tiling run end to end."""
from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest
import torch
from fastapi.testclient import TestClient

from backends import tensorrt_backend as trtb
from backends.torch_backend import TorchBackend
from dgae.config import TilingConfig
from dgae.errors import BackendError, InputError, TooLargeError
from export import manifest as mf
from service.app import create_app
from service.core.errors import status_of
from service.core.settings import ServiceSettings

from service_cases import AUTH, API_KEY, latents, st_bytes

FAKE_TRT = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="input", OUTPUT="output"),
                           float32="fp32", float16="fp16", bfloat16="bf16")
C = 4  # the tiny preset's latent channels
MIN_PX, OPT_PX, MAX_PX, MAX_BATCH = 32, 48, 48, 4
# tiles small enough for the fake profile: 48 px decode tiles fit 32..48, 64 px encode tiles do not
SMALL_TILES = TilingConfig(decode_tile=48, decode_overlap=16, encode_tile=64, encode_overlap=16)
READY_WAIT_S = 60


def image_shapes(channels: int, lo: int = MIN_PX, opt: int = OPT_PX, hi: int = MAX_PX, max_batch: int = MAX_BATCH):
    return ((1, channels, lo, lo), (2, channels, opt, opt), (max_batch, channels, hi, hi))


class FakeContext:
    def __init__(self, engine: "FakeEngine"):
        self.engine, self.shapes, self.addresses, self.runs = engine, {}, {}, 0

    def set_input_shape(self, name, shape) -> bool:
        if tuple(shape) in self.engine.refuse:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        b, _, h, w = self.shapes[self.engine.image_input]
        return (b, self.engine.output_channels, h, w)

    def set_tensor_address(self, name, ptr) -> None:
        self.addresses[name] = ptr

    def execute_async_v3(self, stream_handle) -> bool:
        self.runs += 1
        return True


class FakeEngine:
    """The ICudaEngine methods _Engine uses: I/O names and modes, dtypes, one profile, a context."""

    def __init__(self, inputs: dict, output: str, output_channels: int = 3, refuse=()):
        self.inputs, self.output, self.output_channels, self.refuse = inputs, output, output_channels, set(refuse)
        self.names = [*inputs, output]
        self.image_input = next(n for n, s in inputs.items() if len(s[0]) == trtb.IMAGE_RANK)
        self.contexts = []

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return FAKE_TRT.TensorIOMode.INPUT if name in self.inputs else FAKE_TRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return FAKE_TRT.float32

    def get_tensor_profile_shape(self, name, index):
        assert index == trtb.PROFILE_INDEX
        return self.inputs[name]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def fake_engines(encoder_px=(MIN_PX, OPT_PX, MAX_PX), denoiser_px=(MIN_PX, OPT_PX, MAX_PX), refuse=()):
    stream = SimpleNamespace(cuda_stream=0)
    cpu = torch.device("cpu")
    t_shapes = ((1,), (2,), (MAX_BATCH,))
    enc = FakeEngine({"images": image_shapes(3, *encoder_px)}, "mean", output_channels=C)
    den = FakeEngine({"x_t": image_shapes(3, *denoiser_px), "t": t_shapes, "z": image_shapes(C, *denoiser_px)},
                     "v", refuse=refuse)
    return {mf.ENCODER: trtb._Engine(FAKE_TRT, enc, mf.ENCODER, cpu, stream),
            mf.DENOISER: trtb._Engine(FAKE_TRT, den, mf.DENOISER, cpu, stream)}


# --- the engine wrapper --------------------------------------------------------------------------
def test_engine_reads_its_profile_and_sizes_buffers_at_the_maximum():
    den = fake_engines()[mf.DENOISER]
    assert den.profile == trtb.SizeProfile(mf.DENOISER, (1, 2, MAX_BATCH),
                                           ((MIN_PX, MIN_PX), (OPT_PX, OPT_PX), (MAX_PX, MAX_PX)))
    assert den.max_batch == MAX_BATCH and den.inputs == ["x_t", "t", "z"] and den.outputs == ["v"]
    assert den.buffers["x_t"].numel() == MAX_BATCH * 3 * MAX_PX * MAX_PX
    assert den.buffers["v"].numel() == MAX_BATCH * 3 * MAX_PX * MAX_PX
    assert str(den.profile) == f"the denoiser engine's profile (batch 1..{MAX_BATCH}, 32x32..48x48 px)"


def test_run_inside_the_profile_binds_every_tensor():
    den = fake_engines()[mf.DENOISER]
    (v,) = den.run({"x_t": torch.zeros(2, 3, 40, 40), "t": torch.zeros(2), "z": torch.zeros(2, C, 40, 40)})
    ctx = den.engine.contexts[0]
    assert tuple(v.shape) == (2, 3, 40, 40) and ctx.runs == 1
    assert ctx.shapes["x_t"] == (2, 3, 40, 40) and set(ctx.addresses) == {"x_t", "t", "z", "v"}


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (1, 3, 56, 40), (MAX_BATCH + 1, 3, 40, 40)])
def test_run_outside_the_profile_is_a_typed_error_naming_shape_and_profile(shape):
    den = fake_engines()[mf.DENOISER]
    feeds = {"x_t": torch.zeros(shape), "t": torch.zeros(shape[0]), "z": torch.zeros(shape[0], C, *shape[2:])}
    with pytest.raises(trtb.EngineShapeError, match=r"x_t \(.*\) is outside the denoiser engine's profile") as err:
        den.run(feeds)
    assert str(tuple(shape)) in str(err.value) and "32x32..48x48" in str(err.value)
    assert den.engine.contexts[0].runs == 0


def test_set_input_shape_false_raises_instead_of_running():
    refused = (1, 3, 40, 40)
    den = fake_engines(refuse=[refused])[mf.DENOISER]
    with pytest.raises(trtb.EngineShapeError, match=r"TensorRT refused input x_t \(1, 3, 40, 40\) for the denoiser"):
        den.run({"x_t": torch.zeros(refused), "t": torch.zeros(1), "z": torch.zeros(1, C, 40, 40)})
    assert den.engine.contexts[0].runs == 0
    with pytest.raises(trtb.EngineShapeError, match="refused"):  # also when sizing buffers at load
        fake_engines(refuse=[(MAX_BATCH, 3, MAX_PX, MAX_PX)])
    assert issubclass(trtb.EngineShapeError, BackendError)


# --- request sizes against a profile ---------------------------------------------------------------
PROFILE = trtb.SizeProfile("denoiser", (1, 2, MAX_BATCH), ((32, 32), (48, 48), (64, 64)))


def test_inside_the_profile_keeps_the_requested_mode():
    assert trtb.runnable_tile_mode(PROFILE, "decode", (64, 32), None, "auto", 288) == "auto"
    assert trtb.runnable_tile_mode(PROFILE, "decode", (96, 96), (48, 48), "auto", 48) == "auto"
    assert trtb.runnable_tile_mode(PROFILE, "decode", (48, 48), None, "off", 288) == "off"


def test_below_the_minimum_is_a_400_naming_the_profile():
    with pytest.raises(InputError, match=r"a 16x64 decode is smaller than the denoiser engine's profile") as err:
        trtb.runnable_tile_mode(PROFILE, "decode", (16, 64), None, "auto", 288)
    assert not isinstance(err.value, TooLargeError) and status_of(err.value) == 400


def test_tile_off_above_the_maximum_says_tile_auto_would_fit():
    with pytest.raises(TooLargeError, match=r"tile=off exceeds the denoiser engine's profile .*send tile=auto") as err:
        trtb.runnable_tile_mode(PROFILE, "decode", (128, 128), None, "off", 48)
    assert status_of(err.value) == 413


def test_a_profile_smaller_than_the_model_tile_refuses_with_the_rebuild_size():
    with pytest.raises(TooLargeError, match=r"does not cover the model's 288 px decode tile.*covers 288x288"):
        trtb.runnable_tile_mode(PROFILE, "decode", (96, 96), None, "auto", 288)
    with pytest.raises(TooLargeError, match=r"covers 320x320"):  # tiles do not fit either: rebuild for the size
        trtb.runnable_tile_mode(PROFILE, "decode", (320, 320), None, "off", 288)


def test_tiles_below_the_minimum_run_the_whole_image_when_it_fits():
    big_min = trtb.SizeProfile("denoiser", (1, 1, 1), ((64, 64), (64, 64), (128, 128)))
    assert trtb.runnable_tile_mode(big_min, "decode", (96, 96), (48, 48), "auto", 48) == "off"


def test_decode_input_size_pads_like_the_pipeline(tiny_model):
    from dgae.sampler import prepare_decode_buffer

    cfg = tiny_model.config
    buf = prepare_decode_buffer(torch.zeros(1, C, 5, 3), cfg.downsample_factor, cfg.decoder_multiple, [0])
    assert trtb.decode_input_size(cfg, (5, 3)) == tuple(buf.shape[-2:])


# --- the backend: orchestration + tiling with the profile's shapes ---------------------------------
class ProfiledTorch(trtb.TensorRTBackend):
    """The TensorRT backend's shape logic over fake engines, computing with the tiny torch model."""

    def attach(self, inner: TorchBackend) -> "ProfiledTorch":
        self.inner, self.seen, self.checkpoint_sha256 = inner, [], inner.checkpoint_sha256
        return self

    def encoder_moments(self, images):
        self.seen.append(("encode", tuple(images.shape)))
        return self.inner.encoder_moments(images)

    def denoise(self, buf, t):
        self.seen.append(("denoise", tuple(buf.shape)))
        return self.inner.denoise(buf, t)


def profiled(tiny_checkpoint, tiling: TilingConfig = SMALL_TILES, **engines) -> ProfiledTorch:
    inner = TorchBackend.from_checkpoint(tiny_checkpoint)
    config = dataclasses.replace(inner.config, tiling=tiling).validate()
    return ProfiledTorch.from_engines(config, fake_engines(**engines)).attach(inner)


def test_backend_reports_its_profiles_and_tile_coverage(tiny_checkpoint):
    b = profiled(tiny_checkpoint)
    info = b.info().to_dict()
    assert info["extra"]["covers_decode_tile"] is True and info["extra"]["covers_encode_tile"] is False
    assert "32x32..48x48" in info["extra"]["profiles"]["denoiser"]
    assert b.max_batch_size == MAX_BATCH and b.warmup_side() == MIN_PX
    assert profiled(tiny_checkpoint, TilingConfig()).covers_decode_tile is False  # 288 px tiles > 48


def test_decode_larger_than_the_profile_runs_in_tiles_that_fit_it(tiny_checkpoint):
    b = profiled(tiny_checkpoint)
    z = latents(n=2, h=8, w=10)                                   # 64x80 px: above the 48 px maximum
    out = b.decode(z, steps=1, seeds=3)
    assert tuple(out.shape) == (2, 3, 64, 80) and torch.isfinite(out).all()
    shapes = [s for op, s in b.seen if op == "denoise"]
    assert len(shapes) > 1 and all(b.profiles[mf.DENOISER].accepts(*s[-2:]) and s[0] <= MAX_BATCH for s in shapes)
    # the same tiles as the torch backend with these tiles: same image
    ref = profiled(tiny_checkpoint).inner
    ref.config = b.config
    torch.testing.assert_close(out, ref.decode(z, steps=1, seeds=3))


def test_decode_refusals_happen_before_any_engine_call(tiny_checkpoint):
    b = profiled(tiny_checkpoint)
    with pytest.raises(TooLargeError, match="send tile=auto"):
        b.decode(latents(h=8, w=8), steps=1, seeds=0, tile="off")
    with pytest.raises(InputError, match="smaller than the denoiser engine's profile"):
        b.decode(latents(h=2, w=2), steps=1, seeds=0)
    no_tile = profiled(tiny_checkpoint, TilingConfig())
    with pytest.raises(TooLargeError, match="does not cover the model's 288 px decode tile"):
        no_tile.decode(latents(h=8, w=8), steps=1, seeds=0)
    with pytest.raises(TooLargeError, match="does not cover the model's 64 px encode tile"):
        b.encode(torch.zeros(1, 3, 96, 96))
    assert b.seen == [] and no_tile.seen == []


def test_warmup_side_must_lie_in_every_profile(tiny_checkpoint):
    b = profiled(tiny_checkpoint, encoder_px=(40, 40, 48))
    assert b.warmup_side() == 40
    with pytest.raises(BackendError, match="share no square size"):
        profiled(tiny_checkpoint, encoder_px=(48, 48, 48), denoiser_px=(32, 32, 40)).warmup_side()


def test_service_warms_up_inside_the_profile_and_answers_413_naming_it(tiny_checkpoint):
    """Before: the warm-up encoded an 8x8 image, outside any real engine profile, and failed."""
    b = profiled(tiny_checkpoint)
    settings = ServiceSettings(api_keys=(API_KEY,), max_wait_ms=5, default_steps=1, torch_threads=1)
    with TestClient(create_app(settings, backend=b)) as c:
        deadline = time.monotonic() + READY_WAIT_S
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.02)
        assert b.seen[0] == ("encode", (1, 3, MIN_PX, MIN_PX))
        r = c.post("/decode?tile=off&seed=0", content=st_bytes(latents(h=8, w=8)), headers=AUTH)
        assert r.status_code == 413, r.text
        assert "denoiser engine's profile" in r.json()["error"]["message"]
        r = c.post("/decode?seed=0", content=st_bytes(latents(h=8, w=8)), headers=AUTH)
        assert r.status_code == 200, r.text
