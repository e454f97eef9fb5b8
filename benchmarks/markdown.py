"""Markdown tables (for the README) rendered from the results JSON, with the machine named."""
from __future__ import annotations

from pathlib import Path

from .report import fmt, read_json


def _table(headers: list[str], rows: list[list[str]]) -> str:
    align = "|".join("---" if i == 0 else "---:" for i in range(len(headers)))   # text left, numbers right
    lines = ["| " + " | ".join(headers) + " |", f"|{align}|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _machine_line(report: dict) -> str:
    m = report["machine"]
    ckpt = m.get("checkpoint") or {}
    weights = "trained" if ckpt.get("trained") else "random-init (speed does not depend on weights)"
    run = report.get("run", {})
    timing = f"; run took {run['wall_s']:.0f} s wall / {run['cpu_s']:.0f} s CPU" if run else ""
    if run.get("threads"):
        timing += f"; {run['threads']} intra-op thread(s)"
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if k in ("torch", "onnxruntime", "diffusers"))
    return (f"*Machine: {m['summary']}; {libs}; commit `{(m['git'].get('commit') or '?')[:10]}`; "
            f"preset `{ckpt.get('preset')}`, {weights}, sha256 `{(ckpt.get('sha256') or '?')[:12]}`{timing}.*")


def backends_md(report: dict) -> str:
    unit = "CPU ms" if report.get("clock") == "cpu" else "ms"
    rows = [[r["backend"], r["op"], str(r["size"]), str(r["batch"]), str(r["steps"] or "-"),
             fmt(r["latency"]["p50_ms"], ".1f"), fmt(r["latency"]["p99_ms"], ".1f"), fmt(r["images_per_s"], ".2f"),
             fmt(r["ratio_vs_eager"], ".2f")] for r in report["rows"]]
    skipped = [f"- `{name}` skipped: {b['skipped']}" for name, b in report["backends"].items() if "skipped" in b]
    return "\n".join([_machine_line(report), "",
                      _table(["backend", "op", "px", "batch", "steps", f"p50 {unit}", f"p99 {unit}", "img/s",
                              "× eager"], rows),
                      "", *skipped])


def load_md(report: dict) -> str:
    rows = [[cfg["name"], lv["op"], str(lv["concurrency"]), str(lv["ok"]), str(lv["errors"]),
             fmt(lv["requests_per_s"], ".2f"), fmt(lv["latency"]["p50_ms"], ".0f"), fmt(lv["latency"]["p95_ms"], ".0f"),
             fmt(lv["latency"]["p99_ms"], ".0f"), fmt(lv["mean_batch_size"], ".2f")]
            for cfg in report["configs"] for lv in cfg["levels"]]
    out = [_machine_line(report), "",
           f"{report['size']} px images, decode {report['steps']} step(s), PNG responses, one image per request; "
           f"each level bounded by {report['max_requests']} requests / {report['level_seconds']:.0f} s.", "",
           _table(["service", "op", "clients", "ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch"],
                  rows)]
    s = report.get("summary")
    if s:
        out += ["", _table(["op", "clients", "batching ÷ max_batch_size=1"],
                           [[r["op"], str(r["concurrency"]), f"{r['ratio']:.2f}×"] for r in s["batching_ratio"]])]
        out += ["", _table(["op", "service config", "clients", "service img/s", "in-process img/s (same batch)",
                            "service ÷ in-process"],
                           [[r["op"], r["config"], str(r["concurrency"]), fmt(r["service_images_per_s"], ".2f"),
                             f"{r['inprocess_images_per_s']:.2f} (batch {r['batch']})", f"{r['ratio']:.2f}"]
                            for r in s["service_vs_inprocess"]])]
    return "\n".join(out)


def anchors_md(report: dict) -> str:
    unit = "CPU ms" if report.get("clock") == "cpu" else "ms"
    rows = [[r["label"], f"{r['params'] / 1e6:.1f}M", fmt(r["gflops_per_image"], ".1f"), fmt(r["ms_per_image"], ".1f"),
             fmt(r["images_per_s"], ".2f"), fmt(r["cost_vs_sd_vae"], ".2f")] for r in report["rows"]]
    return "\n".join(
        [
            _machine_line(report),
            "",
            f"Decode of {report['size']} px images, batch {report['batch']}, {report['precision']}, "
            f"{report.get('clock', 'wall')} clock; "
            f"DGAE preset `{report['preset']}`.",
            "",
            _table(["decoder", "params", "GFLOP / image", f"{unit} / image", "img/s", "cost ÷ SD-VAE"], rows),
        ]
    )


def sizes_md(report: dict) -> str:
    rows = [[r["op"], str(r["size"]), "tiled" if r["tile"] == "auto" else "untiled",
             fmt(r.get("seconds"), ".2f"), fmt(r.get("s_per_mp"), ".2f"),
             fmt(r["peak_rss_bytes"] / 2 ** 30, ".2f") if "peak_rss_bytes" in r else r.get("error", "-")]
            for r in report["rows"]]
    ratios = [[s["op"], "tiled" if s["tile"] == "auto" else "untiled", str(s["size"]), f"{s['cost_per_mp_ratio']:.2f}×"]
              for s in report["summary"] if s["size"] != s["base_size"]]
    base = min(report["sizes"])
    return "\n".join([_machine_line(report), "",
                      f"One image per call, backend `{report['backend']}`, decode {report['steps']} step(s), "
                      f"{report.get('clock', 'wall')} clock; every "
                      f"row a fresh process (its own peak RSS); tiles {report['tiling']}.", "",
                      _table(["op", "side px", "tiling", "seconds", "s / MP", "peak RSS GiB"], rows), "",
                      _table(["op", "tiling", "side px", f"cost/MP ÷ at {base} px"], ratios)])


RENDERERS = {"backends": backends_md, "load": load_md, "anchors": anchors_md, "sizes": sizes_md}


def render_folder(folder: Path) -> str:
    parts = []
    for path in sorted(Path(folder).glob("*.json")):
        report = read_json(path)
        kind = report.get("benchmark")
        if kind in RENDERERS:
            png = path.with_suffix(".png")
            parts.append(f"#### `{path.name}`\n\n{RENDERERS[kind](report)}")
            if png.is_file():
                parts.append(f"![{kind}]({png.as_posix()})")
    return "\n\n".join(parts)
