"""dgae encode-dataset / decode-dataset and formats.shards.LatentDataset, on small synthetic images
(the tiny preset): sources, bad inputs, exactly-once resume after a real kill -9, worker-count and
engine independence, torchrun rank split, round trips, and equality with `dgae encode`."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bulk.preprocess import adm_center_crop
from cli.main import main
from formats.shards import DATASET_FILE, ERRORS_FILE, LatentDataset, key_seed, read_shard, sample_tensors_bytes
from dgae.checkpoint import save_checkpoint
from dgae.config import TilingConfig
from dgae.errors import InputError
from dgae.model import DGAE
from dgae.presets import get_preset
from formats.latents import load_latents

REPO = Path(__file__).resolve().parent.parent
SIDE = 32
N_GOOD = 10
KILL_IMAGES = 24
KILL_SIDE = 64
KILL_TIMEOUT_S = 240
POLL_S = 0.02
TILED_SIDE = 80  # > the 48 px encode tile of the test's checkpoint


def write_images(folder: Path, n: int, side: int = SIDE, seed: int = 0, sub: bool = True,
                 vary: bool = False) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        d = folder / (f"class{i % 2}" if sub else "")
        d.mkdir(parents=True, exist_ok=True)
        # smooth content (not white noise) so encodings are not degenerate
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((side + 8 * (i % 2) if vary else side, side), Image.BICUBIC)
        paths.append(d / f"img{i:03d}.png")
        img.save(paths[-1])
    return paths


def add_bad_files(folder: Path, good: Path) -> dict[str, str]:
    """A zero-byte file, a truncated PNG and a text file named like an image -> expected kinds."""
    (folder / "empty.png").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image at all\n")
    return {"empty.png": "empty", "truncated.png": "corrupt", "notes.jpg": "not_image"}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def encode(src, out, ckpt, *extra) -> int:
    return main(["encode-dataset", str(src), str(out), "-c", str(ckpt), "--no-progress", *map(str, extra)])


@pytest.fixture()
def photo_dir(tmp_path):
    src = tmp_path / "src"
    paths = write_images(src, N_GOOD, vary=True)  # two sizes: batches group equal sizes
    kinds = add_bad_files(src, paths[0])
    (src / "README.txt").write_text("ignored: no image suffix")
    return src, kinds


# --- sources and bad inputs ----------------------------------------------------------------------
def test_folder_source_lists_bad_inputs_with_reasons(tmp_path, tiny_checkpoint, photo_dir):
    src, kinds = photo_dir
    out = tmp_path / "out"
    assert encode(src, out, tiny_checkpoint, "--shard-size", 4, "--batch-size", 3) == 0
    errors = [json.loads(line) for line in (out / ERRORS_FILE).read_text().splitlines()]
    assert {e["source"]: e["kind"] for e in errors} == kinds
    assert all(e["reason"].startswith(e["source"]) and "0x" not in e["reason"] for e in errors)
    info = json.loads((out / DATASET_FILE).read_text())
    assert info["counts"] == {"inputs": N_GOOD + len(kinds), "samples": N_GOOD, "errors": len(kinds)}
    assert sum(s["count"] for s in info["shards"]) == N_GOOD and len(info["shards"]) == 4
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == N_GOOD
    for row in rows:
        for k in ("key", "source", "label", "orig_width", "orig_height", "preprocessing", "checkpoint_sha256",
                  "latent_scale", "latent_shift", "shard", "shard_sha256"):
            assert k in row
    ds = LatentDataset(out, verify=True)
    assert len(ds) == N_GOOD and {ds[i]["key"] for i in range(len(ds))} == {r["key"] for r in rows}
    assert ds[0]["latents"].shape == (4, SIDE // 8, SIDE // 8)


def test_strict_makes_a_bad_input_fatal(tmp_path, tiny_checkpoint, photo_dir, capsys):
    src, _ = photo_dir
    assert encode(src, tmp_path / "out", tiny_checkpoint, "--strict") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "--strict" in err


def test_list_sources_with_labels(tmp_path, tiny_checkpoint):
    paths = write_images(tmp_path / "imgs", 4, sub=False)
    csv_path = tmp_path / "list.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for i, p in enumerate(paths):
            w.writerow([p.relative_to(tmp_path).as_posix(), i * 10])
        w.writerow(["imgs/missing.png", 99])
    txt_path = tmp_path / "list.txt"
    txt_path.write_text("# comment\n" + "".join(f"{p} cat{i}\n" for i, p in enumerate(paths)))
    for lst, labels in ((csv_path, [0, 10, 20, 30]), (txt_path, [f"cat{i}" for i in range(4)])):
        out = tmp_path / f"out-{lst.suffix[1:]}"
        assert encode(lst, out, tiny_checkpoint) == 0
        ds = LatentDataset(out)
        assert [ds[i]["label"] for i in range(len(ds))] == labels
    errors = (tmp_path / "out-csv" / ERRORS_FILE).read_text()
    assert "missing.png" in errors and "unreadable" in errors


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_tar_source(tmp_path, tiny_checkpoint):
    paths = write_images(tmp_path / "imgs", 5, sub=False)
    good = [p.read_bytes() for p in paths]
    _tar(tmp_path / "train-000.tar", [("a/s0.png", good[0]), ("a/s0.cls", b"3"), ("s1.png", good[1]),
                                      ("s1.cls", b"5"), ("s2.png", good[2][: len(good[2]) // 2]), ("s3.json", b"{}")])
    _tar(tmp_path / "train-001.tar", [("s4.jpg", b""), ("s5.png", good[3]), ("s5.cls", b"7")])
    out = tmp_path / "out"
    assert encode(tmp_path / "train-{000..001}.tar", out, tiny_checkpoint) == 0
    ds = LatentDataset(out)
    assert sorted((ds[i]["record"]["source"], ds[i]["label"]) for i in range(len(ds))) == \
        [("train-000.tar:a/s0", 3), ("train-000.tar:s1", 5), ("train-001.tar:s5", 7)]
    kinds = {e["source"]: e["kind"] for e in map(json.loads, (out / ERRORS_FILE).read_text().splitlines())}
    assert kinds == {"train-000.tar:s2": "corrupt", "train-000.tar:s3": "bad_source", "train-001.tar:s4": "empty"}
    # the output is a WebDataset the webdataset library reads
    wds = pytest.importorskip("webdataset")
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(ds.key(i) for i in range(len(ds)))
    assert all({"safetensors", "json", "cls"} <= set(s) for s in samples)
    z, meta = load_latents(samples[0]["safetensors"])  # a sample is a latents file `dgae decode` reads
    assert z.shape == (1, 4, SIDE // 8, SIDE // 8) and meta["checkpoint_sha256"]


# --- determinism, resume -------------------------------------------------------------------------
def test_worker_count_does_not_change_a_byte(tmp_path, tiny_checkpoint, photo_dir):
    src, _ = photo_dir
    outs = []
    for workers in (0, 2):
        outs.append(tmp_path / f"w{workers}")
        assert encode(src, outs[-1], tiny_checkpoint, "--workers", workers, "--shard-size", 3, "--flip",
                      "--store", "moments", "--threads", 1) == 0
    assert tree(outs[0]) == tree(outs[1])


def test_finished_run_is_skipped_and_damaged_shards_recomputed(tmp_path, tiny_checkpoint, photo_dir):
    src, _ = photo_dir
    out = tmp_path / "out"
    assert encode(src, out, tiny_checkpoint, "--shard-size", 4) == 0
    before = tree(out)
    shard = sorted((out / "shards").glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:100])  # damaged after the fact
    (out / "shards" / f".{shard.name}.tmp-999999").write_bytes(b"half a shard")  # a killed writer's leftover
    (out / ".parts" / "shard-000002.json").write_text("{")  # a torn completion record
    assert encode(src, out, tiny_checkpoint, "--shard-size", 4) == 0
    assert tree(out) == before


def test_rerun_with_other_options_is_refused(tmp_path, tiny_checkpoint, photo_dir, capsys):
    src, _ = photo_dir
    out = tmp_path / "out"
    assert encode(src, out, tiny_checkpoint) == 0
    assert encode(src, out, tiny_checkpoint, "--store", "moments") == 2
    assert "differs in: store" in capsys.readouterr().err
    assert encode(src, out, tiny_checkpoint, "--store", "moments", "--overwrite") == 0
    assert LatentDataset(out).store == "moments"


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_midway_then_rerun_is_byte_identical(tmp_path, tiny_checkpoint):
    src = tmp_path / "src"
    paths = write_images(src, KILL_IMAGES, side=KILL_SIDE)
    add_bad_files(src, paths[0])
    args = ["--shard-size", "2", "--batch-size", "2", "--workers", "1", "--threads", "1", "--no-progress",
            "-c", str(tiny_checkpoint)]
    reference = tmp_path / "reference"
    assert encode(src, reference, tiny_checkpoint, *args[:-2]) == 0

    out = tmp_path / "killed"
    proc = _cli("encode-dataset", str(src), str(out), *args)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not list((out / ".parts").glob("shard-*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = list((out / ".parts").glob("shard-*.json"))
    assert 0 < len(done) < len(list((reference / ".parts").glob("shard-*.json")))
    assert not (out / DATASET_FILE).exists()

    rerun = _cli("encode-dataset", str(src), str(out), *args)
    assert rerun.wait(timeout=KILL_TIMEOUT_S) == 0, rerun.stderr.read().decode()
    assert "already complete" in rerun.stderr.read().decode()
    assert tree(out) == tree(reference)


def test_torchrun_ranks_split_shards_and_match_one_process(tmp_path, tiny_checkpoint, photo_dir):
    src, _ = photo_dir
    args = ["--shard-size", "3", "--threads", "1", "--workers", "0", "--no-progress", "-c", str(tiny_checkpoint)]
    single = tmp_path / "single"
    assert encode(src, single, tiny_checkpoint, *args[:-2]) == 0
    out = tmp_path / "ranks"
    procs = [_cli("encode-dataset", str(src), str(out), *args, env={"RANK": str(r), "WORLD_SIZE": "2",
                                                                    "LOCAL_RANK": str(r)}) for r in (1, 0)]
    for p in procs:
        assert p.wait(timeout=KILL_TIMEOUT_S) == 0, p.stderr.read().decode()
    assert tree(out) == tree(single)


@pytest.mark.timeout(600)
def test_ray_engine_writes_the_local_engines_shards(tmp_path, tiny_checkpoint, photo_dir):
    pytest.importorskip("ray")
    src, _ = photo_dir
    common = ["--shard-size", "4", "--threads", "1", "--store", "moments", "--flip"]
    assert encode(src, tmp_path / "local", tiny_checkpoint, *common) == 0
    assert encode(src, tmp_path / "ray", tiny_checkpoint, *common, "--engine", "ray", "--ray-num-cpus", "1",
                  "--ray-actors", "1") == 0
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")


# --- LatentDataset vs dgae encode ----------------------------------------------------------------
def _dgae_encode(tmp_path: Path, ckpt, images: list[Path], *extra) -> torch.Tensor:
    out = tmp_path / f"enc-{len(list(tmp_path.glob('enc-*')))}.safetensors"
    assert main(["encode", *map(str, images), "-o", str(out), "-c", str(ckpt), *map(str, extra)]) == 0
    return load_latents(out.read_bytes())[0]


def test_latent_dataset_returns_exactly_what_dgae_encode_gives(tmp_path, tiny_checkpoint):
    paths = write_images(tmp_path / "imgs", 4, side=40, sub=False)  # 40 is not a multiple of 8: fit pad
    src = tmp_path / "imgs"
    # one image per batch, as `dgae encode IMAGE` runs it
    assert encode(src, tmp_path / "mean", tiny_checkpoint, "--batch-size", 1, "--fit", "pad") == 0
    ds = LatentDataset(tmp_path / "mean")
    by_source = {ds[i]["record"]["source"]: ds[i]["latents"] for i in range(len(ds))}
    for p in paths:
        assert torch.equal(by_source[p.name], _dgae_encode(tmp_path, tiny_checkpoint, [p], "--fit", "pad")[0])
    # the same batch of four, as `dgae encode A B C D --batch-size 4` runs it
    assert encode(src, tmp_path / "mean4", tiny_checkpoint, "--batch-size", 4) == 0
    ds4 = LatentDataset(tmp_path / "mean4")
    assert torch.equal(torch.stack([ds4[i]["latents"] for i in range(4)]),
                       _dgae_encode(tmp_path, tiny_checkpoint, paths, "--batch-size", 4))
    # --store sample: the seed derived from the key is recorded; dgae encode --mode sample --seed it
    assert encode(src, tmp_path / "sample", tiny_checkpoint, "--batch-size", 1, "--store", "sample",
                  "--seed", 7) == 0
    dss = LatentDataset(tmp_path / "sample")
    item = dss[0]
    assert item["record"]["seed"] == key_seed(item["key"], 7)
    ref = _dgae_encode(tmp_path, tiny_checkpoint, [src / item["record"]["source"]], "--mode", "sample",
                       "--seed", item["record"]["seed"])[0]
    assert torch.equal(item["latents"], ref) and not torch.equal(item["latents"], by_source[item["record"]["source"]])
    # --store moments: the mean is `--mode mean`; resampling with a seed is `--mode sample --seed`
    assert encode(src, tmp_path / "moments", tiny_checkpoint, "--batch-size", 1, "--store", "moments") == 0
    dsm = LatentDataset(tmp_path / "moments", sample=True, seed=3)
    plain = LatentDataset(tmp_path / "moments")
    for i in (0, 1):
        source = plain[i]["record"]["source"]
        assert torch.equal(plain[i]["latents"], by_source[source])
        ref = _dgae_encode(tmp_path, tiny_checkpoint, [src / source], "--mode", "sample", "--seed", dsm.sample_seed(i))
        assert torch.equal(dsm[i]["latents"], ref[0])
    first = dsm[0]["latents"]
    dsm.set_epoch(1)
    assert not torch.equal(dsm[0]["latents"], first)  # a new draw each epoch


def test_flip_modes_and_mirrored_latents(tmp_path, tiny_checkpoint):
    paths = write_images(tmp_path / "imgs", 3, side=SIDE, sub=False)
    out = tmp_path / "out"
    assert encode(tmp_path / "imgs", out, tiny_checkpoint, "--flip", "--batch-size", 1) == 0
    both = LatentDataset(out, flip="both")
    assert len(both) == 2 * len(paths) and [both.is_flipped(i) for i in range(4)] == [False, True, False, True]
    mirrored = tmp_path / "mirrored.png"
    source = both[1]["record"]["source"]
    Image.open(tmp_path / "imgs" / source).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored)
    assert torch.equal(both[1]["latents"], _dgae_encode(tmp_path, tiny_checkpoint, [mirrored])[0])
    rnd = LatentDataset(out, flip="random", seed=0)
    flips = [rnd.is_flipped(i) for i in range(len(rnd))]
    assert flips == [rnd.is_flipped(i) for i in range(len(rnd))]  # seeded: the same every time
    assert all(torch.equal(rnd[i]["latents"], both[2 * i + f]["latents"]) for i, f in enumerate(flips))
    assert encode(tmp_path / "imgs", tmp_path / "noflip", tiny_checkpoint) == 0
    with pytest.raises(InputError, match="--flip"):
        LatentDataset(tmp_path / "noflip", flip="both")


def test_safetensors_shards_parquet_manifest_and_iterable_reading(tmp_path, tiny_checkpoint, photo_dir):
    pa = pytest.importorskip("pyarrow.parquet")
    src, _ = photo_dir
    out = tmp_path / "out"
    assert encode(src, out, tiny_checkpoint, "--shard-format", "safetensors", "--manifest", "parquet",
                  "--shard-size", 4, "--dtype", "fp16") == 0
    table = pa.read_table(out / "manifest.parquet").to_pylist()
    assert len(table) == N_GOOD and all(r["shard"].endswith(".safetensors") for r in table)
    ds = LatentDataset(out)
    assert len(ds) == N_GOOD and ds[0]["latents"].dtype == torch.float32
    assert len(read_shard(out / "shards" / table[0]["shard"])) == 4
    loader = torch.utils.data.DataLoader(ds.iterable(), batch_size=None, num_workers=2)
    assert sorted(s["key"] for s in loader) == sorted(ds.key(i) for i in range(len(ds)))


def test_tiled_images_match_dgae_encode_too(tmp_path):
    """An image larger than the model's encode tile: bulk (mean, and moments -> LatentDataset) gives
    what `dgae encode` gives, tiled; --no-tile gives the one-piece encode."""
    torch.manual_seed(0)
    config = get_preset("tiny").replace(tiling=TilingConfig(decode_tile=48, decode_overlap=16, encode_tile=48,
                                                            encode_overlap=16))
    ckpt = tmp_path / "tiled.safetensors"
    save_checkpoint(DGAE(config), ckpt)
    (path,) = write_images(tmp_path / "imgs", 1, side=TILED_SIDE, sub=False)
    tiled = _dgae_encode(tmp_path, ckpt, [path])[0]
    whole = _dgae_encode(tmp_path, ckpt, [path], "--no-tile")[0]
    assert not torch.equal(tiled, whole)
    for store, extra in (("mean", []), ("moments", []), ("mean", ["--no-tile"])):
        out = tmp_path / f"out-{store}-{len(extra)}"
        assert encode(tmp_path / "imgs", out, ckpt, "--store", store, *extra) == 0
        assert torch.equal(LatentDataset(out)[0]["latents"], whole if extra else tiled)


# --- decode-dataset ------------------------------------------------------------------------------
def test_decode_dataset_round_trip_and_key_seeds(tmp_path, tiny_checkpoint):
    paths = write_images(tmp_path / "imgs", 3, side=36, sub=False)  # padded to 40, decoded back to 36
    enc = tmp_path / "enc"
    assert encode(tmp_path / "imgs", enc, tiny_checkpoint) == 0
    dec = tmp_path / "dec"
    argv = ["decode-dataset", str(enc), str(dec), "-c", str(tiny_checkpoint), "--steps", "1", "--seed", "5",
            "--shard-size", "2", "--no-progress"]
    assert main(argv) == 0
    before = tree(dec)
    assert main(argv) == 0 and tree(dec) == before  # rerun: skipped, identical
    with tarfile.open(sorted((dec / "shards").glob("*.tar"))[0]) as tf:
        names = tf.getnames()
        png = tf.extractfile(names[0]).read()
        record = json.loads(tf.extractfile(names[1]).read())
    assert Image.open(io.BytesIO(png)).size == (36, 36)
    # the image is `dgae decode` of that sample's latents with the seed derived from its key
    sample = next(s for p in sorted((enc / "shards").glob("*.tar")) for s in read_shard(p) if s.key == record["key"])
    assert record["seed"] == key_seed(record["key"], 5)
    one = tmp_path / "one.safetensors"
    one.write_bytes(sample_tensors_bytes({"latents": sample.tensors["latents"]}, sample.encode_meta))
    assert main(["decode", str(one), "-o", str(tmp_path / "ref.png"), "-c", str(tiny_checkpoint), "--steps", "1",
                 "--seed", str(record["seed"])]) == 0
    ref = np.asarray(Image.open(tmp_path / "ref.png")).astype(int)
    assert np.abs(np.asarray(Image.open(io.BytesIO(png))).astype(int) - ref).max() <= 1
    assert len(paths) == len(LatentDataset(enc))


def test_decode_dataset_from_a_folder_of_npy_to_a_folder(tmp_path, tiny_checkpoint):
    lat = tmp_path / "lat"
    lat.mkdir()
    rng = np.random.default_rng(0)
    np.save(lat / "a.npy", rng.standard_normal((2, 4, 4, 4)).astype(np.float32))
    np.save(lat / "b.npy", rng.standard_normal((4, 4, 4)).astype(np.float32))
    (lat / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "out"
    code = main(["decode-dataset", str(lat), str(out), "-c", str(tiny_checkpoint), "--steps", "1", "--format",
                 "folder", "--no-progress"])
    assert code == 2  # a malformed latents file is named when listing
    (lat / "bad.npy").unlink()
    assert main(["decode-dataset", str(lat), str(out), "-c", str(tiny_checkpoint), "--steps", "1", "--format",
                 "folder", "--no-progress"]) == 0
    files = sorted((out / "images").glob("*.png"))
    assert len(files) == 3 and all(Image.open(f).size == (32, 32) for f in files)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == ["a.npy#0", "a.npy#1", "b.npy"]


# --- preprocessing -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(300, 200), (64, 64), (1000, 97)])
def test_adm_center_crop_is_square_and_identity_at_size(size):
    rgb = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    assert adm_center_crop(rgb, 64).shape == (64, 64, 3)
    square = rgb[:64, :64]
    assert np.array_equal(adm_center_crop(np.ascontiguousarray(square), 64), square)


def test_center_crop_options_encode_to_the_crop_size(tmp_path, tiny_checkpoint):
    write_images(tmp_path / "imgs", 2, side=48, sub=False)
    for extra in (["--center-crop", 16], ["--resize", 24, "--center-crop", 16, "--crop-style", "center"]):
        out = tmp_path / f"out{len(extra)}"
        assert encode(tmp_path / "imgs", out, tiny_checkpoint, *extra) == 0
        assert LatentDataset(out)[0]["latents"].shape == (4, 2, 2)
    assert encode(tmp_path / "imgs", tmp_path / "bad", tiny_checkpoint, "--resize", 24, "--center-crop", 16) == 2
