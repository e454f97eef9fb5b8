"""`dgae` CLI end to end on the tiny preset, and one-line errors (no traceback) for bad input."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from cli.main import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def photo(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:45, 0:70]
    img = np.stack([xx * 3, yy * 5, (xx + yy) * 2], -1) + rng.integers(0, 20, (45, 70, 3))
    p = tmp_path / "photo.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
    return p


def test_init_info_encode_decode_roundtrip(tmp_path, photo, capsys):
    ckpt = tmp_path / "t.safetensors"
    assert main(["init", "tiny", "-o", str(ckpt)]) == 0
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "sha256" in out and "tiny" in out

    lat = tmp_path / "lat.safetensors"
    assert main(["encode", str(photo), "-o", str(lat), "-c", str(ckpt), "--fit", "pad"]) == 0
    with safe_open(str(lat), "pt") as fh:
        assert fh.get_tensor("latents").shape == (1, 4, 6, 9)
        assert '"orig_width": 70' in fh.metadata()["dgae"]
    png = tmp_path / "dec.png"
    assert main(["decode", str(lat), "-o", str(png), "-c", str(ckpt), "--steps", "1", "--seed", "3"]) == 0
    assert Image.open(png).size == (70, 45)  # padding cropped back to the original size
    first = np.asarray(Image.open(png))
    assert main(["decode", str(lat), "-o", str(png), "-c", str(ckpt), "--steps", "1", "--seed", "3"]) == 0
    assert np.array_equal(first, np.asarray(Image.open(png)))

    assert main(["roundtrip", str(photo), str(photo), "-o", str(tmp_path / "rt"), "-c", str(ckpt), "--steps", "1"]) == 0
    assert "PSNR" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["truncated", "shape", "junk"])
def test_bad_checkpoints_give_one_line_error(tmp_path, tiny_checkpoint, case):
    bad = tmp_path / f"{case}.safetensors"
    data = tiny_checkpoint.read_bytes()
    if case == "truncated":
        bad.write_bytes(data[: len(data) // 3])
    elif case == "junk":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        import torch
        from safetensors.torch import save_file
        with safe_open(str(tiny_checkpoint), "pt") as fh:
            meta, t = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
        t["encoder.conv_in.weight"] = torch.zeros(1, 3, 3, 3)
        save_file(t, str(bad), metadata=meta)
    if case == "shape":  # loading happens on use: decode valid latents with the bad checkpoint
        np.save(tmp_path / "x.npy", np.zeros((1, 4, 2, 2), np.float32))
        r = run_cli("decode", tmp_path / "x.npy", "-o", tmp_path / "o", "-c", bad)
    else:
        r = run_cli("info", bad)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert str(bad.name) in lines[0]


def test_bad_image_and_fit_error(tmp_path, tiny_checkpoint, photo):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    r = run_cli("encode", junk, "-o", tmp_path / "l.safetensors", "-c", tiny_checkpoint)
    assert r.returncode == 2 and "junk.png" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("encode", photo, "-o", tmp_path / "l.safetensors", "-c", tiny_checkpoint, "--fit", "error")
    assert r.returncode == 2 and "not a multiple of 8" in r.stderr


def test_missing_default_checkpoint_message(tmp_path, monkeypatch, photo):
    import dgae.checkpoint as ck
    monkeypatch.setattr(ck, "BUNDLED_CHECKPOINT", tmp_path / "absent.safetensors")
    monkeypatch.delenv("DGAE_CHECKPOINT", raising=False)
    assert main(["encode", str(photo), "-o", str(tmp_path / "l.safetensors")]) == 2


def test_missing_optional_dependency_disables_only_its_subcommand(tmp_path):
    """Without pydantic (the [serve] extra) `dgae serve` says what is missing; `dgae info` works."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent("""
        import sys
        sys.modules["pydantic"] = None  # import pydantic -> ModuleNotFoundError
        from cli.main import main
        sys.exit(main(sys.argv[1:]))
    """)
    repo = Path(__file__).resolve().parents[1]
    serve = subprocess.run([sys.executable, "-c", code, "serve"], cwd=repo, capture_output=True, text=True,
                           timeout=120, check=False)
    assert serve.returncode == 2
    assert "'dgae serve' is not available" in serve.stderr and "'pydantic'" in serve.stderr
    assert "Traceback" not in serve.stderr
    info = subprocess.run([sys.executable, "-c", code, "info", "--help"], cwd=repo, capture_output=True, text=True,
                          timeout=120, check=False)
    assert info.returncode == 0, info.stderr


def test_info_validates_tensors_as_loading_does(tmp_path, tiny_checkpoint):
    """The largest tensor replaced by a flat one of half its elements: info and decode both refuse it."""
    import torch
    from safetensors.torch import save_file

    with safe_open(str(tiny_checkpoint), "pt") as fh:
        meta, t = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    largest = max(t, key=lambda k: t[k].numel())
    t[largest] = torch.zeros(t[largest].numel() // 2)
    bad = tmp_path / "flat.safetensors"
    save_file(t, str(bad), metadata=meta)
    r = run_cli("info", bad)
    assert r.returncode == 2 and largest in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- output checks before any model work (issue 27) ------------------------------------------------------
@pytest.fixture()
def one_latent(tmp_path, tiny_checkpoint, photo):
    lat = tmp_path / "lat.safetensors"
    assert main(["encode", str(photo), "-o", str(lat), "-c", str(tiny_checkpoint), "--fit", "pad"]) == 0
    return lat


@pytest.mark.parametrize("target,message", [
    ("/nonexistent_dir/x.png", "does not exist"),
    ("out.gif", "unknown image suffix '.gif'; write one of .png, .jpg, .jpeg, .webp"),
    ("out.bmp", "unknown image suffix '.bmp'"),
], ids=["missing folder", "gif", "bmp"])
def test_decode_refuses_a_bad_output_path_before_decoding(tmp_path, tiny_checkpoint, one_latent, monkeypatch,
                                                          capsys, target, message):
    import cli.commands.decode as decode_cmd

    def no_decoding(*args, **kwargs):
        pytest.fail("decoded before checking the output path")

    monkeypatch.setattr(decode_cmd, "decode_batches", no_decoding)
    monkeypatch.setattr(decode_cmd, "load_backend", no_decoding)
    out = target if target.startswith("/") else str(tmp_path / target)
    capsys.readouterr()
    assert main(["decode", str(one_latent), "-o", out, "-c", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / target).exists()  # no directory named out.gif


def test_decode_to_a_missing_folder_is_one_line_and_exit_2(tmp_path, tiny_checkpoint, one_latent):
    r = run_cli("decode", one_latent, "-o", "/nonexistent_dir/x.png", "-c", tiny_checkpoint)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: -o /nonexistent_dir/x.png: folder /nonexistent_dir does not "
                                             "exist"]


def test_decode_writes_jpeg_and_webp_by_suffix(tmp_path, tiny_checkpoint, one_latent):
    for name, fmt in (("x.jpg", "JPEG"), ("x.webp", "WEBP"), ("x.png", "PNG")):
        assert main(["decode", str(one_latent), "-o", str(tmp_path / name), "-c", str(tiny_checkpoint),
                     "--steps", "1"]) == 0
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt and im.size == (70, 45)


def test_roundtrip_photos_of_different_sizes(tmp_path, tiny_checkpoint, photo, capsys):
    """Each size is encoded and decoded on its own; every image gets its reconstruction and PSNR, and an
    image's result does not depend on the others in the call (seed per image)."""
    other = tmp_path / "tall.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 40, 3), dtype=np.uint8)).save(other)
    out = tmp_path / "rt"
    assert main(["roundtrip", str(photo), str(other), str(photo), "-o", str(out), "-c", str(tiny_checkpoint),
                 "--steps", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "PSNR" in ln]
    assert len(lines) == 3 and lines[1].startswith("tall.png: PSNR")
    # photo.png twice: outputs are numbered in argument order
    assert Image.open(out / "0001.png").size == (40, 64) and Image.open(out / "0002.png").size == (64, 40)
    alone = tmp_path / "alone.png"
    assert main(["roundtrip", str(photo), "-o", str(alone), "-c", str(tiny_checkpoint), "--steps", "1"]) == 0
    assert np.array_equal(np.asarray(Image.open(alone)), np.asarray(Image.open(out / "0000.png")))


def test_encode_to_an_impossible_folder_fails_before_encoding(tmp_path, tiny_checkpoint, photo, monkeypatch, capsys):
    import cli.commands.encode as encode_cmd

    monkeypatch.setattr(encode_cmd, "load_backend", lambda *a: pytest.fail("loaded the model before checking -o"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    capsys.readouterr()
    assert main(["encode", str(photo), "-o", str(blocker / "sub" / "l.safetensors"), "-c", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the folder" in err[0], err
