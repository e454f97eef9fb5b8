"""`dgae info [CKPT]`: config, parameter counts, sha256."""
from __future__ import annotations

import json

from dgae.checkpoint import describe, resolve_checkpoint


def add_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint (default: bundled)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    d = describe(resolve_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    params = d["params"]
    print(f"checkpoint  {d['path']}\nsha256      {d['sha256']}\nbytes       {d['bytes']}")
    print(f"preset      {d['preset']}  (f={d['downsample_factor']}, c={d['latent_channels']})")
    print(f"params      encoder {params['encoder'] / 1e6:.2f}M  decoder {params['decoder'] / 1e6:.2f}M  "
          f"total {params['total'] / 1e6:.2f}M")
    for k, v in d["metadata"].items():
        print(f"meta        {k} = {v[:200]}")
    print("config      " + json.dumps(d["config"], sort_keys=True))
    return 0
