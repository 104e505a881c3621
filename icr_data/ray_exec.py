"""Ray executor: the build's generate and score stages on a Ray cluster, through Ray Data.

    pip install 'icr-data[ray]'
    icr-data build recipes/demo.yaml --executor ray                    # a local Ray, or RAY_ADDRESS
    icr-data build RECIPE --executor ray --address HEAD_IP:6379         # join a running cluster
    icr-data generate RECIPE --executor ray; icr-data score RECIPE --executor ray; icr-data merge RECIPE

The unit of work is the shard, exactly as in the local path (build.py, shards.py). The shards left to
do become a Ray dataset, one shard per block; `map_batches` hands them, `ray.batch_size` at a time, to
a fixed pool of actors. A generation actor opens one engine (vLLM, or transformers) when it starts and
runs the local path's own `sample` on each shard it is given; a scoring actor loads one model (the
policy pass, then a new pool for the reference pass: one model resident at a time, as locally) and
runs `encode_candidates` + `sequence_logps` on each shard. Each shard's output comes back to the
driver as Arrow IPC bytes and the driver saves it with the same `WorkDir.save`, under the same key
and with the same marker as the local path, as soon as it arrives.

Why the shard and why the driver writes: a sample depends only on its prompt row and its per-prompt
seed, and the scorer forms its length-sorted token-budget batches within one shard, so running a
shard whole in an actor gives the rows a local run gives (same seeds, same batches, same code).
Shipping the finished table as IPC bytes keeps its types exactly (no conversion through Ray's
formats), and one writer means the store has to be visible to the driver only, never to the
workers. Keys are computed once, on the driver, by `make_plan`; so a Ray run skips the shards a
local run finished and the other way round, and a killed Ray run loses at most the shards in flight.
Scoring runs on the device the key names (resolved on the driver); on a cluster whose driver has no
GPU, set `scoring.device: cuda` so the keys name the GPU the actors will use.

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
import functools
import io
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from icr_data import models
from icr_data.errors import IcrError
from icr_data.build import (
    GEN_COLUMNS,
    ROLES,
    Plan,
    _need_generation,
    _with_scoring_prompt,
    _writing,
    pending,
)
from icr_data.shards import mine

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console
    from rich.progress import Progress

    from icr_data.config import RayConfig


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


def from_bytes(blob: bytes):
    import pyarrow as pa
    from datasets import Dataset

    return Dataset(pa.ipc.open_stream(blob).read_all())


def _batch(shards: list[int], blobs: list[bytes], extra: list[str]) -> pa.Table:
    import pyarrow as pa

    worker = f"{socket.gethostname()}:{os.getpid()}"
    return pa.table({"shard": pa.array(shards, pa.int64()), "data": pa.array(blobs, pa.large_binary()),
                     "extra": extra, "worker": [worker] * len(shards)})  # fmt: skip


class GenerateActor:
    """Holds one engine for the actor's life; samples whole shards with the local path's code."""

    def __init__(self, model: str, sampling, chat_template: str | None):
        from icr_data.generate import open_backend

        self.cfg = sampling
        self.backend = open_backend(model, sampling, chat_template)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from icr_data.generate import sample

        shards, blobs = batch["shard"].to_pylist(), batch["data"].to_pylist()
        outs = [
            sample(self.backend, from_bytes(b), self.cfg).select_columns(GEN_COLUMNS) for b in blobs
        ]
        return _batch(shards, [to_bytes(o.data.table) for o in outs], [""] * len(shards))


class ScoreActor:
    """Holds one model of the reward pair; scores whole shards with the local path's code."""

    def __init__(
        self, model: str, pair: tuple[str, str], chat_template: str | None, scoring, device: str
    ):
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RayError(f"scoring keys name device {device} but this actor sees no GPU; "
                           "set ray.gpus_per_actor >= 1 or scoring.device: cpu")  # fmt: skip
        self.cfg, self.device = scoring, device
        # the tokenizer make_plan checked, loaded from the same files
        self.tok = models.pair_tokenizer(*pair, chat_template)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.model = models.load_causal_lm(model, device, models.pick_dtype(scoring.dtype, device))

    def __call__(self, batch: pa.Table) -> pa.Table:
        import json

        from datasets import Dataset

        from icr_data.score import ScoreStats, encode_candidates, sequence_logps

        blobs, extra = [], []
        for blob in batch["data"].to_pylist():
            rows = encode_candidates(from_bytes(blob), self.tok, self.cfg.count_eot)
            stats = ScoreStats()
            logps = sequence_logps(self.model, rows, self.pad_id, self.device, self.cfg.token_budget,
                                   self.cfg.max_batch_size, stats=stats)  # fmt: skip
            out = Dataset.from_dict(
                {"logp": logps, "response_tokens": [len(r.response_ids) for r in rows]}
            )
            blobs.append(to_bytes(out.data.table))
            extra.append(json.dumps(stats.as_dict()))
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


def engine_sampling(cfg, pool: Pool):
    """The sampling settings an actor's engine opens with: an actor holding a fraction of a GPU
    (ray.gpus_per_actor < 1, several engines per GPU) takes that share of vLLM's default 0.9 of
    the GPU's memory unless sampling.gpu_memory_utilization says; not part of the shard keys."""
    if 0 < pool.gpus < 1 and cfg.gpu_memory_utilization is None:
        return dataclasses.replace(cfg, gpu_memory_utilization=round(0.9 * pool.gpus, 4))
    return cfg


def _batches(n_shards: int, pool_batch: int) -> int:
    return -(-n_shards // pool_batch)


def run_generate(
    plan: Plan, part, console: Console, progress: Progress, address: str | None = None
) -> dict:
    """build.run_generate through a Ray actor pool: the same shards, keys, markers and report."""
    shards = mine(plan.shards, part)
    todo, report = pending(plan, "generate", plan.gen_keys, shards, console, "generate")
    if not todo:
        return report
    nodes = connect(address)
    cfg = plan.recipe.sampling
    pool = plan_pool(
        plan.recipe.ray,
        nodes,
        _batches(len(todo), plan.recipe.ray.batch_size),
        cfg.tensor_parallel_size,
    )
    console.print(f"generate: {len(todo)} shard(s) on {pool.actors} Ray actor(s), "
                  f"{pool.gpus:g} GPU and {pool.cpus:g} CPU each")  # fmt: skip
    cols = ["prompt_id", "lang", "instruction"]
    items = [{"shard": s.index, "data": to_bytes(plan.shard_prompts(s).select_columns(cols).with_format("arrow")[:])}
             for s in todo]  # fmt: skip
    ctor = {
        "model": plan.resolved["generator"],
        "sampling": engine_sampling(cfg, pool),
        "chat_template": plan.recipe.models.chat_template,
    }
    task = progress.add_task(
        "generate", total=sum(len(plan.rows_of[s.index]) for s in todo), rate=""
    )
    workers = set()
    for row in _run_pool(items, GenerateActor, ctor, pool):
        with _writing(plan.work.root):
            plan.work.save("generate", plan.gen_keys[row["shard"]], from_bytes(row["data"]),
                           {"shard": row["shard"], "generator": plan.ids["generator"]})  # fmt: skip
        workers.add(row["worker"])
        progress.advance(task, len(plan.rows_of[row["shard"]]))
    report["workers"] = sorted(workers)
    return report


def run_score(
    plan: Plan, part, console: Console, progress: Progress, address: str | None = None
) -> dict:
    """build.run_score through Ray: a pool for the policy pass, then one for the reference pass."""
    import json

    from icr_data.score import ScoreStats

    shards = mine(plan.shards, part)
    _need_generation(plan, shards, "score")
    cfg = plan.recipe.scoring
    device = models.pick_device(cfg.device)  # what make_plan put in the keys
    pair = (plan.resolved["policy"], plan.resolved["reference"])
    reports: dict[str, dict] = {}
    for role in ROLES:
        keys = plan.logp_keys[role]
        todo, reports[role] = pending(plan, "logp", keys, shards, console, f"score ({role})")
        if not todo:
            continue
        nodes = connect(address)
        on_gpu = device.startswith("cuda")
        if on_gpu and not any(n.get("GPU") for n in nodes):
            raise RayError(f"scoring.device resolves to {device} but the Ray cluster has no GPU")
        if (
            not on_gpu
            and any(n.get("GPU") for n in nodes)
            and plan.recipe.ray.gpus_per_actor is None
        ):
            console.print("score: on CPU, the device this driver's keys name; set scoring.device=cuda "
                          "to score on the cluster's GPUs")  # fmt: skip
        pool = plan_pool(
            plan.recipe.ray, nodes, _batches(len(todo), plan.recipe.ray.batch_size), int(on_gpu)
        )
        cands = {s.index: _with_scoring_prompt(plan, s, plan.work.load("generate", plan.gen_keys[s.index]))
                 for s in todo}  # fmt: skip
        items = [{"shard": i, "data": to_bytes(c.data.table)} for i, c in cands.items()]
        ctor = {"model": plan.resolved[role], "pair": pair, "chat_template": plan.recipe.models.chat_template,
                "scoring": cfg, "device": device}  # fmt: skip
        task = progress.add_task(f"score ({role})", total=sum(map(len, cands.values())), rate="")
        total, workers = ScoreStats(), set()
        for row in _run_pool(items, ScoreActor, ctor, pool):
            with _writing(plan.work.root):
                plan.work.save("logp", keys[row["shard"]], from_bytes(row["data"]),
                               {"shard": row["shard"], "role": role, "model": plan.ids[role]})  # fmt: skip
            stats = json.loads(row["extra"])
            for f in dataclasses.fields(total):  # summed over actors: tokens_per_s is per actor
                setattr(total, f.name, getattr(total, f.name) + stats[f.name])
            workers.add(row["worker"])
            progress.update(task, advance=len(cands[row["shard"]]),
                            rate=f"{total.tokens_per_s:,.0f} tok/s per actor")  # fmt: skip
        reports[role].update(throughput=total.as_dict(), workers=sorted(workers))
    return reports


def runners(address: str | None):
    """(run_generate, run_score) with build.py's signatures, bound to a cluster address."""
    return (
        functools.partial(run_generate, address=address),
        functools.partial(run_score, address=address),
    )
