"""Faults survived by `dgae encode-dataset` (issue 27, docs/faults.md): a full disk / file size limit
while a shard is written is a clear error, leaves no partial shard, and a rerun of the same command
resumes to a result byte-identical to an uninterrupted run."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_bulk import REPO, encode, tree, write_images

SMALL_SIDE, LARGE_SIDE = 16, 192 # shard 0 holds the small images, shard 1 the large ones
PER_SHARD = 2
RUN_TIMEOUT_S = 300
ARGS = ("--shard-size", str(PER_SHARD), "--batch-size", str(PER_SHARD), "--workers", "0", "--threads", "1")

# Run the CLI with RLIMIT_FSIZE set: a write past the limit fails with EFBIG (Python ignores SIGXFSZ),
# which is what a full disk does to the writer too (ENOSPC), without needing a small filesystem.
LIMITED_RUN = textwrap.dedent("""
    import resource, sys
    from cli.main import main
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(main(sys.argv[2:]))
""")


TMPFS_SLACK_BYTES = 3 * 4096  # tmpfs pages for plan.json and shard 0's record beside shard 0


def reference_run(tmp_path: Path, ckpt) -> tuple[Path, Path, int, int]:
    """Sources with a small shard 0 and a large shard 1, and their uninterrupted encoding."""
    src = tmp_path / "src"
    write_images(src / "a", PER_SHARD, side=SMALL_SIDE, sub=False)
    write_images(src / "b", PER_SHARD, side=LARGE_SIDE, seed=1, sub=False)
    reference = tmp_path / "reference"
    assert encode(src, reference, ckpt, *ARGS) == 0
    small, large = (p.stat().st_size for p in sorted((reference / "shards").glob("*.tar")))
    assert small + TMPFS_SLACK_BYTES < large
    return src, reference, small, large


def only_shard_0_left(out: Path, reference: Path) -> None:
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == [".parts/plan.json", ".parts/shard-000000.json", "shards/shard-000000.tar"]  # no partial shard
    shard_0 = Path("shards") / "shard-000000.tar"
    assert (out / shard_0).read_bytes() == (reference / shard_0).read_bytes()


def test_file_size_limit_mid_run_is_a_clear_error_and_the_rerun_resumes(tmp_path, tiny_checkpoint):
    src, reference, small, large = reference_run(tmp_path, tiny_checkpoint)
    limit = (small + large) // 2  # shard 0 fits, shard 1 does not

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", LIMITED_RUN, str(limit), "encode-dataset", str(src), str(out),
                          "-c", str(tiny_checkpoint), "--no-progress", *ARGS],
                         cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write") and "shard-000001.tar" in last, run.stderr
    assert "the file size limit is reached" in last and "rerun the same command to resume" in last
    assert "Traceback" not in run.stderr
    only_shard_0_left(out, reference)

    assert encode(src, out, tiny_checkpoint, *ARGS) == 0  # room again: the same command resumes
    assert tree(out) == tree(reference)


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A tmpfs mount (needs root / CAP_SYS_ADMIN; skipped where mounting is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(size: int, remount: bool = False) -> None:
        opts = f"{'remount,' if remount else ''}size={size}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    yield mnt, mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_really_full_disk_is_a_clear_error_and_the_rerun_resumes(tmp_path, tiny_checkpoint, small_tmpfs):
    """The same on a tmpfs too small for shard 1 (ENOSPC), grown afterwards."""
    src, reference, small, large = reference_run(tmp_path, tiny_checkpoint)
    mnt, mount = small_tmpfs
    mount(small + TMPFS_SLACK_BYTES)
    out = mnt / "out"
    run = subprocess.run([sys.executable, "-m", "cli", "encode-dataset", str(src), str(out), "-c", str(tiny_checkpoint),
                          "--no-progress", *ARGS], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "shard-000001.tar" in last and "the disk is full" in last and "Traceback" not in run.stderr
    only_shard_0_left(out, reference)
    mount(4 * (small + large), remount=True)
    assert encode(src, out, tiny_checkpoint, *ARGS) == 0
    assert tree(out) == tree(reference)
