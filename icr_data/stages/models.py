"""Model references: resolve a recipe's model string, identify it, load it, check a reward pair.

A model string is a local folder, `builtin:tiny-policy` / `builtin:tiny-reference` (tiny models
built offline, see tiny.py), `builtin:smollm2-135m-instruct` (see smollm2.py), `train:CONFIG`
(the model a DPO training config produces, trained once and cached; see train.py), or a Hub id
(loaded by transformers/vLLM from the local HF cache or, where the network allows, the Hub).

Resolving is pure: `builtin:` and `train:` models are made by an explicit preparation step
(prepare.py; `build` runs it first), and `resolve` only names the folder where the prepared
model lives, or says it is not prepared yet. This module imports no icr_data module that imports
it back (not train, prepare or the converters), so the import graph stays free of cycles.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from icr_data.base.errors import IcrError
from icr_data.base.hf import quiet_transformers as quiet_transformers  # re-exported


class ModelError(IcrError):
    """A model that is missing or cannot serve its role."""


class NotPrepared(ModelError):
    """A `builtin:` or `train:` model whose preparation has not run yet (see prepare.py)."""


def resolve(spec: str, role: str = "model", key: str | None = None) -> str:
    """A loadable path or Hub id for `spec`; raises ModelError naming `key` (the recipe key or
    option that gave it; default `models.<role>`) if it is missing, NotPrepared if it is a
    `builtin:` or `train:` model not prepared yet. Builds nothing. Commands resolve through
    prepare.resolve_models, which also checks that a Hub id can be loaded."""
    key = key or f"models.{role}"
    try:
        path = prepared_path(spec)
    except NotPrepared:  # a train: config whose starting model is not prepared yet
        raise NotPrepared(_not_prepared(spec, key, " (nor is the model it starts from)")) from None
    except ModelError as e:
        raise ModelError(f"{key}: {e}") from None
    if path is not None:
        if not is_prepared(spec, path):
            raise NotPrepared(_not_prepared(spec, key))
        return str(path)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{key}: {spec} has no config.json (not a model folder)")
        return str(path.resolve())
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_local:
        raise ModelError(f"{key}: model path not found: {spec}")
    return spec  # a Hub id


def _not_prepared(spec: str, key: str, why: str = "") -> str:
    return (
        f"{key}: {spec} is not prepared yet{why}; run `icr-data prepare {spec}` "
        "(build prepares its models first)"
    )


def prepared_path(spec: str) -> Path | None:
    """Where the model a `builtin:` or `train:` string names lives once prepared (whether or not
    it is yet; see is_prepared); None for a folder or a Hub id, which need no preparation.
    Raises ModelError for an unknown builtin or a bad training config, and NotPrepared for a
    `train:` config whose starting model is not prepared (its key hashes that model)."""
    if spec.startswith("train:"):
        from icr_data.base.train_config import TrainError

        try:
            return trained_path(spec.removeprefix("train:"))
        except NotPrepared:
            raise
        except (TrainError, ModelError) as e:  # a bad config, or a starting model that is missing
            raise ModelError(f"{spec}: {e}") from None
    if spec.startswith("builtin:"):
        from icr_data.stages.smollm2 import NAME, smollm2_dir
        from icr_data.stages.tiny import builtin_path

        if spec == f"builtin:{NAME}":
            return smollm2_dir()
        try:
            return builtin_path(spec)
        except ValueError as e:
            raise ModelError(str(e)) from None
    return None


def is_prepared(spec: str, path: Path) -> bool:
    """Whether the prepared model of `spec` is complete at `path` (prepared_path's answer): a
    trained model once its training.json is written (last), a builtin once its folder is moved in
    whole. A killed preparation leaves neither."""
    return (
        Path(path) / ("training.json" if spec.startswith("train:") else "config.json")
    ).is_file()


def trained_path(config: str | Path) -> Path:
    """The cache folder of the model a training config produces (`train:CONFIG`), keyed by content:
    the config's settings, the data file or version manifest, the training code and the starting
    model's identity (so its starting model must be prepared: NotPrepared if not). Pure: hashes
    files, trains nothing (prepare.py trains; see prepare.trained_model). The config's own
    output_dir is not used. Raises TrainError for a config that trains no loadable model."""
    from icr_data.base.train_config import TrainError, load_train_config
    from icr_data.stages.tiny import builtin_cache
    from icr_data.store.shards import digest
    from icr_data.store.store import sha256_file

    cfg = load_train_config(config, need_output=False)
    if cfg.adapter_only:
        raise TrainError(f"train:{config}: lora.merge is false, so it trains no loadable model "
                         "(only an adapter); set lora.merge: true to use it as a model")  # fmt: skip
    src = Path(cfg.data.source)
    data_key = (sha256_file(src) if src.is_file() else
                sha256_file(src / "manifest.json") if src.is_dir() else
                f"{cfg.data.source}@{cfg.data.revision}")  # fmt: skip
    start = identity(cfg.model, resolve(cfg.model, "model"))
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "output_dir"}
    settings["data"].pop("source")
    # the code that trains is part of the key: a fixed loss or span must not reuse an old model
    from icr_data.base.files import source_file

    code = {
        f"{name.rsplit('.', 1)[1]}.py": sha256_file(source_file(f"icr_data.{name}"))
        for name in ("commands.train", "store.version_ref", "stages.score", "stages.chat")
    }
    code["trl"] = _version("trl")  # the trainer is part of the code that trains
    key = digest({"config": settings, "data": data_key, "code": code,
                  "model": start.get("sha256") or start["name"]})  # fmt: skip
    return builtin_cache() / "trained" / f"{Path(config).stem}-{key[:16]}"


def identity(spec: str, resolved: str) -> dict:
    """What the manifest records about a model: the spec, and a content hash of a local folder."""
    out: dict = {"name": spec}
    path = Path(resolved)
    if not path.is_dir():
        out["revision"] = "unresolved (Hub id; record a revision by pinning a local snapshot)"
        return out
    cache = _HashCache()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not _record_only(p, path)):
        h.update(str(f.relative_to(path)).encode() + b"\0" + cache.sha256(f).encode())
    cache.save()
    out["sha256"] = h.hexdigest()
    snap = path.parent.name == "snapshots"  # HF cache layout: .../snapshots/<revision>
    if snap:
        out["revision"] = path.name
    return out


def _record_only(f: Path, root: Path) -> bool:
    """Files of a trained model's folder that are not the model: the DPO recipe's training.json
    and intermediate checkpoints (so the model's hash is the same before and after they appear)."""
    first = f.relative_to(root).parts[0]
    return first == "training.json" or first.startswith("checkpoint-")


class _HashCache:
    """File sha256s remembered by (path, size, mtime), so an 8B model is not re-read every run."""

    def __init__(self):
        import json

        from icr_data.stages.tiny import builtin_cache

        self.file = builtin_cache() / "file_hashes.json"
        try:
            self.known = json.loads(self.file.read_text())
        except FileNotFoundError:
            self.known = {}
        except (OSError, ValueError) as e:  # a cache: unreadable means recompute, said aloud
            _warn(f"ignoring the file-hash cache {self.file} ({e}); hashes are recomputed")
            self.known = {}
        self.changed = False

    def sha256(self, f: Path) -> str:
        from icr_data.store.store import sha256_file

        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.known:
            digest = sha256_file(f)
            if st.st_size <= 1 << 20:  # only worth remembering for large files
                return digest
            self.known[key], self.changed = digest, True
        return self.known[key]

    def save(self) -> None:
        import json

        if not self.changed:
            return
        from icr_data.base.files import atomic_write_text

        try:
            atomic_write_text(self.file, json.dumps(self.known), fsync=False)
        except OSError as e:  # the run goes on; the next one hashes large files again
            _warn(f"could not save the file-hash cache {self.file}: {e.strerror}")


def _warn(message: str) -> None:
    from icr_data.base.console import stderr_console

    stderr_console().print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def load_tokenizer(path: str, chat_template: str | None = None):
    """The model's tokenizer; `chat_template` (a Jinja string or a file holding one) is used only
    when the tokenizer has none of its own."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if chat_template and not tok.chat_template:
        p = Path(chat_template)
        tok.chat_template = p.read_text(encoding="utf-8") if p.is_file() else chat_template
    return tok


def pair_tokenizer(policy: str, reference: str, chat_template: str | None = None):
    """The tokenizer shared by a reward pair; refuses a pair whose tokenizers or templates differ."""
    tok = load_tokenizer(policy, chat_template)
    check_same_tokenizer(tok, load_tokenizer(reference, chat_template))
    return tok


def check_same_tokenizer(a, b, names: tuple[str, str] = ("policy", "reference")) -> None:
    """Refuse a reward pair whose tokenizers or chat templates differ: log-probs would not align."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])[:5]
        raise ModelError(
            f"{names[0]} and {names[1]} have different tokenizers "
            f"(sizes {len(va)} vs {len(vb)}; only in {names[0]}: {only_a}; "
            f"only in {names[1]}: {only_b}; different ids: {moved})"
        )
    if (a.chat_template or "") != (b.chat_template or ""):
        raise ModelError(f"{names[0]} and {names[1]} have different chat templates")


def pick_device(device: str, where: str = "device") -> str:
    """`auto` -> cuda if available, else cpu; anything else must name a device torch knows and
    this machine has (a ModelError naming `where` otherwise, not torch's traceback later)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelError(
            f"{where}: unknown device {device!r} (auto, cpu, cuda, cuda:N, mps)"
        ) from None
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    ):
        raise ModelError(f"{where}: {device!r} asked for, but torch sees "
                         f"{torch.cuda.device_count()} CUDA device(s) here")  # fmt: skip
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"{where}: 'mps' asked for, but it is not available here")
    return device


def check_reachable(spec: str, resolved: str, key: str) -> None:
    """A model that is not a local folder is a Hub id: it must be in the local HF cache or the Hub
    must answer for it, else one ModelError naming the recipe `key` (not transformers' traceback
    once loading starts). Gated or private repos that exist pass (loading uses the token)."""
    import os

    if Path(resolved).is_dir():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(resolved, "config.json"), str):
        return
    unreachable = f"{key}: model {spec} is not a local folder and the Hub cannot be reached"
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline or constants.HF_HUB_OFFLINE:
        raise ModelError(f"{unreachable} (HF_HUB_OFFLINE is set and it is not in the local "
                         "Hub cache)")  # fmt: skip
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(resolved, timeout=15)
    except GatedRepoError:
        return
    except RepositoryNotFoundError:
        raise ModelError(f"{key}: model {spec} is neither a local folder nor a model on the Hub "
                         "(or it is private and no token is set)") from None  # fmt: skip
    except HfHubHTTPError:  # the Hub answered: let loading say what it says
        return
    except Exception as e:  # noqa: BLE001 - connection errors of whichever HTTP client
        raise ModelError(f"{unreachable} ({type(e).__name__}: {e})") from None


def context_length(path: str) -> int | None:
    """The model's context (positions) from its config, or None if the config names none."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                 "max_sequence_length"):  # fmt: skip
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)") from None


def load_causal_lm(path: str, device: str, dtype):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # recorded as absent: a key made without it differs
        return None


def check_sequence_classifier(path: str, where: str) -> None:
    """Refuse, from its config alone, a model that is not a sequence classifier (an explicit
    reward model scores with one logit)."""
    from transformers import AutoConfig

    arch = (AutoConfig.from_pretrained(path).architectures or [""])[0]
    if not arch.endswith("ForSequenceClassification"):
        raise ModelError(f"{where} is a {arch or 'model of unknown kind'}, not a sequence "
                         "classifier (a reward model scores with one logit)")  # fmt: skip
