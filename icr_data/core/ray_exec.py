"""Ray executor: the build's generate and score stages on a Ray cluster, through Ray Data.

    pip install 'icr-data[ray]'
    icr-data build recipes/demo.yaml --executor ray                    # a local Ray, or RAY_ADDRESS
    icr-data build RECIPE --executor ray --address HEAD_IP:6379         # join a running cluster
    icr-data generate RECIPE --executor ray; icr-data score RECIPE --executor ray; icr-data merge RECIPE

`RayExecutor` has the local executor's interface (executor.py) and is as generic: it runs any stage
(stages.py) and knows nothing of its insides. The unit of work is the shard, exactly as locally.
The tasks left to do become a Ray dataset, one shard per block; `map_batches` hands them,
`ray.batch_size` at a time, to a fixed pool of `StageActor`s. An actor receives the stage (a
picklable dataclass), calls its `open` once (one vLLM engine, or one scoring model: the policy pass
and the reference pass are two pools, one model resident at a time, as locally) and its `run` on
each shard it is given. Each shard's output comes back to the driver as Arrow IPC bytes and the
driver saves it through the local executor's `save`, under the same key and with the same marker,
as soon as it arrives.

Why the shard and why the driver writes: a sample depends only on its prompt row and its per-prompt
seed, and the scorer forms its length-sorted token-budget batches within one shard, so running a
shard whole in an actor gives the rows a local run gives (same seeds, same batches, same code).
Shipping the finished table as IPC bytes keeps its types exactly (no conversion through Ray's
formats), and one writer means the store has to be visible to the driver only, never to the
workers. Keys are computed once, on the driver, by `make_plan`; so a Ray run skips the shards a
local run finished and the other way round, and a killed Ray run loses at most the shards in flight.
A stage's `gpus()` says what one actor takes on a GPU cluster and `requires_gpu()` whether its
keys name a GPU (scoring runs on the device the key names, resolved on the driver; on a cluster
whose driver has no GPU, set `scoring.device: cuda` so the keys name the GPU the actors will use).

Resources come from the recipe's `ray:` section (config.RayConfig: num_actors, gpus_per_actor,
cpus_per_actor, batch_size), defaults from `ray.cluster_resources()`: one actor per GPU (per
`sampling.tensor_parallel_size` GPUs for vLLM, which then runs its own workers inside the actor's
GPUs), or one actor with a node's CPUs on a cluster without GPUs.

Clusters. Without --address, `ray.init()` joins the cluster named by RAY_ADDRESS, else one started on
this machine with `ray start`, else starts a local one. Start a cluster by hand with
`ray start --head --port 6379` on one machine and `ray start --address HEAD_IP:6379` on the others;
on Slurm, run those two in an sbatch script (head on the first node, `srun` the workers on the rest)
and the build on the head; on Kubernetes, use KubeRay (a RayCluster) and `ray job submit
--address http://HEAD:8265 -- icr-data build ...` (RAY_ADDRESS is set for the job). Every node needs
this package installed (the same image or venv) and the models at the same paths (a shared
filesystem, or Hub ids); the store is written by the driver only.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from icr_data.base.errors import IcrError
from icr_data.core.executor import LocalExecutor, Task

if TYPE_CHECKING:
    import pyarrow as pa

    from icr_data.base.config import RayConfig
    from icr_data.core.stage import Stage


class RayError(IcrError):
    """Ray is missing, or the cluster cannot hold the actors the recipe asks for."""


@dataclasses.dataclass(frozen=True)
class Pool:
    actors: int
    gpus: float
    cpus: float
    batch_size: int


def plan_pool(
    cfg: RayConfig, nodes: list[dict[str, float]], batches: int, gpus_wanted: int
) -> Pool:
    """Actor pool of one stage from the recipe and the alive nodes' resources (pure, so tested
    without a cluster). `gpus_wanted`: GPUs one actor takes on a GPU cluster (0 on CPU)."""
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    gpus = (
        cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (gpus_wanted if total_gpus else 0)
    )
    if gpus > max((n.get("GPU", 0) for n in nodes), default=0):
        # Ray would wait forever for an actor no node can hold
        raise RayError(f"an actor needs {gpus:g} GPU(s) but no node of the Ray cluster has that many "
                       f"(cluster GPUs: {total_gpus:g}); set ray.gpus_per_actor or "
                       "sampling.tensor_parallel_size")  # fmt: skip
    actors = cfg.num_actors or (int(total_gpus // gpus) if gpus else 1)
    actors = max(1, min(actors, batches))  # an idle actor would only hold an engine
    if cfg.cpus_per_actor is not None:
        cpus = cfg.cpus_per_actor
    elif gpus:
        cpus = 1.0  # the GPU does the work
    else:  # torch threads follow the actor's CPUs (Ray sets OMP_NUM_THREADS)
        biggest = max((n.get("CPU", 0) for n in nodes), default=1)
        cpus = float(max(1, min(biggest, sum(n.get("CPU", 0) for n in nodes) // actors)))
    if cpus > max((n.get("CPU", 0) for n in nodes), default=0):
        raise RayError(f"an actor needs {cpus:g} CPUs but no node of the Ray cluster has that many")
    return Pool(actors, float(gpus), float(cpus), cfg.batch_size)


def connect(address: str | None) -> list[dict[str, float]]:
    """Join (or start) a Ray cluster; the alive nodes' resources."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayError("--executor ray needs Ray: pip install 'icr-data[ray]'") from None
    if not ray.is_initialized():  # a session the caller opened (a test, a notebook) is kept
        ray.init(address=address)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our progress bar reports
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def to_bytes(table: pa.Table) -> bytes:
    import pyarrow as pa

    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_of(ds) -> pa.Table:
    """A Dataset's rows as one Arrow table (a selection's indices applied)."""
    return ds.with_format("arrow")[:]


def from_bytes(blob: bytes):
    import pyarrow as pa
    from datasets import Dataset

    return Dataset(pa.ipc.open_stream(blob).read_all())


def _batch(shards: list[int], blobs: list[bytes], extra: list[str]) -> pa.Table:
    import pyarrow as pa

    worker = f"{socket.gethostname()}:{os.getpid()}"
    return pa.table({"shard": pa.array(shards, pa.int64()), "data": pa.array(blobs, pa.large_binary()),
                     "extra": extra, "worker": [worker] * len(shards)})  # fmt: skip


class StageActor:
    """Holds one opened stage for the actor's life; runs whole shards with the stage's own code."""

    def __init__(self, stage: Stage, gpus: float):
        self.stage = stage.for_worker(gpus)
        self.stage.open()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import json

        blobs, extra = [], []
        for blob in batch["data"].to_pylist():
            out = self.stage.run(from_bytes(blob))
            blobs.append(to_bytes(table_of(out)))
            extra.append(json.dumps(self.stage.stats()))
        return _batch(batch["shard"].to_pylist(), blobs, extra)


def _run_pool(items: list[dict], actor: type, ctor: dict[str, Any], pool: Pool):
    """Rows {shard, data, extra, worker} as the actors finish them (not in shard order)."""
    import ray.data

    ds = ray.data.from_items(items, override_num_blocks=len(items))  # a block per shard: streamed
    ds = ds.map_batches(actor, fn_constructor_kwargs=ctor, batch_size=pool.batch_size,
                        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool.actors),
                        num_cpus=pool.cpus, num_gpus=pool.gpus)  # fmt: skip
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from block.to_pylist()


def _batches(n_shards: int, pool_batch: int) -> int:
    return -(-n_shards // pool_batch)


class RayExecutor(LocalExecutor):
    """LocalExecutor's `run`, with the shards done by a Ray actor pool; keys, markers, saving and
    progress are the local executor's own."""

    def __init__(self, work, console=None, progress=None, address: str | None = None,
                 cfg: RayConfig | None = None):  # fmt: skip
        from icr_data.base.config import RayConfig

        super().__init__(work, console, progress)
        self.address, self.cfg = address, cfg or RayConfig()

    def run(self, stage: Stage, todo: list[Task], label: str | None = None) -> dict:
        import json

        label = label or stage.name
        left, report = self.pending(stage, todo, label)
        if not left:
            return report
        nodes = connect(self.address)
        who = f"stage '{stage.name}'" + (f" ({label})" if label != stage.name else "")
        if stage.requires_gpu() and not any(n.get("GPU") for n in nodes):
            device = getattr(stage, "device", "a GPU")
            raise RayError(f"{who} runs on {device} (its keys name a GPU) "
                           "but no node of the Ray cluster has a GPU; nothing was loaded. Run it "
                           "on a cluster with GPUs, or set its device to cpu")  # fmt: skip
        try:
            batches = _batches(len(left), self.cfg.batch_size)
            pool = plan_pool(self.cfg, nodes, batches, stage.gpus())
        except RayError as e:  # the refusal names the stage it refuses
            raise RayError(f"{who}: {e}") from None
        if self.console is not None:
            self.console.print(f"{label}: {len(left)} shard(s) on {pool.actors} Ray actor(s), "
                               f"{pool.gpus:g} GPU and {pool.cpus:g} CPU each")  # fmt: skip
        # tasks go by their place in `left`: one shard can hold several tasks of a stage (the
        # native pass, the stability sample), so its index names none of them alone
        items = [{"shard": i, "data": to_bytes(table_of(t.load()))} for i, t in enumerate(left)]
        per_shard, workers = [], set()
        with self.bar(label, sum(t.size for t in left)) as advance:
            for row in _run_pool(items, StageActor, {"stage": stage, "gpus": pool.gpus}, pool):
                task = left[row["shard"]]
                self.save(stage, task, from_bytes(row["data"]))
                stats = json.loads(row["extra"])
                if stats is not None:
                    per_shard.append(stats)
                workers.add(row["worker"])
                advance(task.size)
        if per_shard:
            report["stats"] = stage.summarize(per_shard)
        report["workers"] = sorted(workers)
        return report
