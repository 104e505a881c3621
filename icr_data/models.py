"""Model references: resolve a recipe's model string, identify it, load it, check a reward pair.

A model string is a local folder, `builtin:tiny-policy` / `builtin:tiny-reference` (tiny models
built offline, see tiny.py), `builtin:smollm2-135m-instruct` (see smollm2.py), `train:CONFIG`
(the model a DPO training config produces, trained once and cached; see train.py), or a Hub id
(loaded by transformers/vLLM from the local HF cache or, where the network allows, the Hub).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from icr_data.errors import IcrError


class ModelError(IcrError):
    """A model that is missing or cannot serve its role."""


def resolve(spec: str, role: str = "model") -> str:
    """A loadable path or Hub id for `spec`; raises ModelError naming the role if it is missing."""
    if spec == "builtin:smollm2-135m-instruct":
        from icr_data.smollm2 import smollm2_path

        try:
            return str(smollm2_path())
        except FileNotFoundError as e:
            raise ModelError(f"models.{role}: {e}") from None
    if spec.startswith("train:"):
        from icr_data.train import TrainError, trained_model

        try:
            return str(trained_model(spec.removeprefix("train:")))
        except TrainError as e:
            raise ModelError(f"models.{role}: {spec}: {e}") from None
    if spec.startswith("builtin:"):
        from icr_data.tiny import resolve_builtin

        try:
            return str(resolve_builtin(spec))
        except FileNotFoundError as e:
            raise ModelError(f"models.{role}: {e}") from None
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"models.{role}: {spec} has no config.json (not a model folder)")
        return str(path.resolve())
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_local:
        raise ModelError(f"models.{role}: model path not found: {spec}")
    return spec  # a Hub id


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

        from icr_data.tiny import builtin_cache

        self.file = builtin_cache() / "file_hashes.json"
        try:
            self.known = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def sha256(self, f: Path) -> str:
        from icr_data.store import sha256_file

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
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.known))
            os.replace(tmp, self.file)
        except OSError:
            pass


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


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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


def quiet_transformers() -> None:
    """Switch off transformers' own tqdm bars (loading weights, writing shards): our rich
    progress reports the work, and hundreds of carriage-return updates clutter logs. Hub
    download bars (huggingface_hub's) are left on."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_causal_lm(path: str, device: str, dtype):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()
