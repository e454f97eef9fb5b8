"""PNG plots from the results JSON: throughput vs batch size per backend, service throughput and
latency vs concurrency, and DGAE decode cost per step count beside the one-pass VAE anchors.
Each plot's title names the machine the numbers came from."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

FIG_SIZE = (11, 4.2)
DPI = 110
TITLE_SIZE = 9
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _int_ticks(ax, values) -> None:
    """Log-2 x axis labelled with the measured values themselves."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: PLC0415

    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(values)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _machine(report: dict) -> str:
    return report.get("machine", {}).get("summary", "unknown machine")


def plot_backends(report: dict, path: Path) -> Path:
    """Per op: images/s vs batch, one line per (backend, image size); decode at the first step count."""
    plt = _pyplot()
    rows = report["rows"]
    first_steps = min((r["steps"] for r in rows if r["op"] == "decode"), default=None)
    fig, axes = plt.subplots(1, 2, figsize=FIG_SIZE)
    for ax, op in zip(axes, ("encode", "decode")):
        for backend in dict.fromkeys(r["backend"] for r in rows):
            for size in sorted({r["size"] for r in rows}):
                pts = sorted((r["batch"], r["images_per_s"]) for r in rows
                             if r["backend"] == backend and r["op"] == op and r["size"] == size
                             and (op == "encode" or r["steps"] == first_steps))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{backend} {size}px")
        label = op + (f", {first_steps} step(s)" if op == "decode" else "")
        ax.set(title=label, xlabel="batch size", ylabel=f"images / s ({report.get('clock', 'wall')} clock)")
        ax.set_ylim(bottom=0)
        _int_ticks(ax, [r["batch"] for r in rows])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"DGAE backends: throughput vs batch size - {_machine(report)}", fontsize=TITLE_SIZE)
    return _save(fig, path)


def plot_load(report: dict, path: Path) -> Path:
    """Per op: requests/s and p50/p99 latency vs concurrency, one line per service config."""
    plt = _pyplot()
    ops = [op for op in ("encode", "decode") if any(lv["op"] == op for c in report["configs"] for lv in c["levels"])]
    fig, axes = plt.subplots(len(ops), 2, figsize=(FIG_SIZE[0], FIG_SIZE[1] * len(ops)), squeeze=False)
    for (ax_tp, ax_lat), op in zip(axes, ops):
        for color, cfg in zip(COLORS, report["configs"]):
            levels = sorted((lv for lv in cfg["levels"] if lv["op"] == op), key=lambda lv: lv["concurrency"])
            xs = [lv["concurrency"] for lv in levels]
            ax_tp.plot(xs, [lv["requests_per_s"] for lv in levels], marker="o", color=color, label=cfg["name"])
            for q, style in (("p50_ms", "-"), ("p99_ms", "--")):
                ax_lat.plot(xs, [lv["latency"][q] for lv in levels], style, marker="o", color=color,
                            label=f"{cfg['name']} {q[:3]}")
        ax_tp.set(title=f"{op}: throughput", xlabel="concurrent clients", ylabel="requests / s")
        ax_lat.set(title=f"{op}: latency", xlabel="concurrent clients", ylabel="ms", yscale="log")
        for ax in (ax_tp, ax_lat):
            _int_ticks(ax, report["concurrency"])
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(f"DGAE service under load - {_machine(report)}", fontsize=TITLE_SIZE)
    return _save(fig, path)


def plot_anchors(report: dict, path: Path) -> Path:
    """Decode milliseconds per image: each anchor VAE and DGAE at every step count."""
    plt = _pyplot()
    rows = report["rows"]
    labels = [r["label"] for r in rows]
    values = [r["ms_per_image"] for r in rows]
    colors = ["tab:gray" if r["kind"] == "anchor" else "tab:blue" for r in rows]
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize="small")
    unit = "CPU ms" if report.get("clock") == "cpu" else "ms"
    ax.set(ylabel=f"decode {unit} / image", yscale="log",
           title=f"decode {report['size']}px, batch {report['batch']}: DGAE steps vs one-pass VAE decoders")
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(_machine(report), fontsize=TITLE_SIZE)
    return _save(fig, path)


def plot_sizes(report: dict, path: Path) -> Path:
    """Seconds per megapixel and peak RSS against image side, per operation and tiling."""
    plt = _pyplot()
    rows = [r for r in report["rows"] if "s_per_mp" in r]
    fig, (ax_cost, ax_mem) = plt.subplots(1, 2, figsize=FIG_SIZE)
    for color, (op, tile) in zip(COLORS, [(o, t) for o in ("encode", "decode") for t in ("auto", "off")]):
        pts = sorted((r["size"], r["s_per_mp"], r["peak_rss_bytes"] / 2 ** 30) for r in rows
                     if r["op"] == op and r["tile"] == tile)
        if not pts:
            continue
        label = f"{op}, {'tiled' if tile == 'auto' else 'untiled'}"
        xs, cost, mem = zip(*pts)
        ax_cost.plot(xs, cost, marker="o", color=color, label=label)
        ax_mem.plot(xs, mem, marker="o", color=color, label=label)
    steps = report.get("steps")
    ax_cost.set(title=f"cost per megapixel (decode {steps} step(s))", xlabel="image side (px)", ylabel="s / MP")
    ax_mem.set(title="process peak RSS", xlabel="image side (px)", ylabel="GiB")
    for ax in (ax_cost, ax_mem):
        _int_ticks(ax, [r["size"] for r in rows] or [1])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"DGAE cost vs image size ({report.get('backend')}) - {_machine(report)}", fontsize=TITLE_SIZE)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    log.info("wrote %s", path)
    return path


PLOTTERS = {"backends": plot_backends, "load": plot_load, "anchors": plot_anchors, "sizes": plot_sizes}


def plot_report(report: dict, path: Path) -> Path:
    return PLOTTERS[report["benchmark"]](report, path)


def plot_folder(folder: Path) -> list[Path]:
    """Re-draw the PNG next to every results JSON in ``folder``."""
    from .report import read_json  # noqa: PLC0415

    out = []
    for json_path in sorted(Path(folder).glob("*.json")):
        report = read_json(json_path)
        if report.get("benchmark") in PLOTTERS:
            out.append(plot_report(report, json_path.with_suffix(".png")))
    return out
