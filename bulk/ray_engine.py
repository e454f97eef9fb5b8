"""``--engine ray``: the same shards on Ray Data, for a cluster of (GPU) machines.

read -> map_batches -> write: the pending shards become a Ray Dataset (one row per shard, its
items as JSON); ``map_batches`` runs them on an actor pool (``ray_actors`` actors, each holding one
backend, with ``ray_cpus_per_actor`` / ``ray_gpus_per_actor``: one actor per GPU or per CPU slot);
each actor reads, decodes and preprocesses its shard's images, encodes them with the code the local
engine runs (:meth:`bulk.encode_context.EncodeContext.encode_shard`, so the bytes are identical) and
writes the shard into OUT with the same atomic commit (OUT must be on a filesystem every node
sees). The driver only tracks progress; rank-0 finalization is the local engine's.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Sequence

from dgae.errors import BackendError, DGAEError, InputError

from .encode_context import EncodeOptions, make_context
from .preprocess import prepare_item
from .shards import ShardedOutput, ShardTask
from .sources import Item

log = logging.getLogger(__name__)

ROWS_PER_CALL = 1  # one shard per actor call: shards are the unit of work and of commit


class ShardEncoder:
    """A Ray actor: one backend, encodes and commits whole shards."""

    def __init__(self, opts: EncodeOptions, plan: dict[str, Any]):
        device = "cuda" if opts.ray_gpus_per_actor > 0 else opts.device
        # Ray gives an actor OMP_NUM_THREADS = its CPUs; --threads (the local engine's) wins when set
        self.ctx = make_context(opts, device, threads=opts.threads or max(1, int(opts.ray_cpus_per_actor)))
        self.out = ShardedOutput(opts.out, plan, opts.shard_format)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        indices, counts = [], []
        for index, items_json in zip(batch["index"], batch["items"]):
            items = tuple(Item(**d) for d in json.loads(items_json))
            task = ShardTask(int(index), items)
            prepared = (prepare_item(it, self.ctx.options.preprocess, self.ctx.f) for it in items)
            part = self.out.commit(self.ctx.encode_shard(task, prepared))
            indices.append(int(index))
            counts.append(part["inputs"])
        return {"index": indices, "inputs": counts}


def run_ray(opts: EncodeOptions, out: ShardedOutput, pending: Sequence[ShardTask],
            advance: Callable[[int], None]) -> None:
    try:
        import ray  # noqa: PLC0415
        import ray.data  # noqa: PLC0415
    except ModuleNotFoundError:
        raise InputError("--engine ray needs Ray Data (pip install 'dgae-serve[bulk]')") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=opts.ray_address, num_cpus=opts.ray_num_cpus if not opts.ray_address else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = [{"index": t.index, "items": json.dumps([it.to_dict() for it in t.items])} for t in pending]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(ShardEncoder, batch_size=ROWS_PER_CALL,
                            compute=ray.data.ActorPoolStrategy(size=min(opts.ray_actors, len(rows))),
                            fn_constructor_kwargs={"opts": opts, "plan": out.plan},
                            num_cpus=opts.ray_cpus_per_actor, num_gpus=opts.ray_gpus_per_actor or None)
        done = 0
        try:
            for row in ds.iter_rows():  # the actor wrote the shard; this drives the pipeline and counts
                advance(int(row["inputs"]))
                done += 1
        except Exception as exc:  # a RayTaskError wrapping ours (e.g. --strict): its one-line message
            cause = getattr(exc, "cause", None) or exc.__cause__
            if isinstance(cause, DGAEError):
                raise type(cause)(str(cause).splitlines()[0]) from None
            raise
        if done != len(rows):
            raise BackendError(f"Ray returned {done} of {len(rows)} shards; rerun to resume")
    finally:
        if started:
            ray.shutdown()
