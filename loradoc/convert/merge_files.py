"""Everything a merge writes besides the weights: config.json, the side files and ``loradoc-merge.json``.

- ``config.json``: the base's, with every ``dtype`` / ``torch_dtype`` set to the output dtype,
  ``tie_word_embeddings: false`` when the merge untied the embeddings, and the task model's class (and labels)
  when the adapter's task type implies one;
- side files (generation config, tokenizer, chat template, processor files): the base's, except that an adapter
  shipping its own tokenizer (``tokenizer.json``, ``tokenizer_config.json`` or ``tokenizer.model``) replaces the
  whole tokenizer set, and an adapter's chat template alone replaces the base's;
- the manifest: the sources (paths, commits, sha256 of every file), versions, what was merged and replaced, and
  the sha256 of every file written.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

from loradoc import __version__
from loradoc.convert.checkpoint import INDEX_NAME
from loradoc.convert.merge_plan import Plan
from loradoc.io.hashing import sha256_file
from loradoc.io.snapshot import AdapterSnapshot
from loradoc.model.profiles import BaseProfile, BaseSource, installed_version

__all__ = [
    "MANIFEST_NAME",
    "TOKENIZER_FILES",
    "build_manifest",
    "copy_side_files",
    "output_config",
    "set_task_class",
    "write_text",
]

MANIFEST_NAME = "loradoc-merge.json"
_TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}

#: Files of a base (or adapter) directory that make up the tokenizer; an adapter shipping tokenizer.json,
#: tokenizer_config.json or tokenizer.model replaces the whole set.
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
})  # fmt: skip
_TOKENIZER_CORE = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_CHAT_TEMPLATES = ("chat_template.jinja", "chat_template.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5", ".onnx", ".npz")
_NOT_COPIED = {"README.md", INDEX_NAME, "pytorch_model.bin.index.json", MANIFEST_NAME, "loradoc-repair.json"}


def write_text(path: Path, text: str) -> dict[str, Any]:
    import hashlib

    data = text.encode("utf-8")
    path.write_bytes(data)
    return {"name": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "from": "merge"}


def output_config(cfg: dict[str, Any], dtype: str, untie: bool) -> dict[str, Any]:
    new = json.loads(json.dumps(cfg))
    name = _TORCH_NAMES[dtype]

    def fix(d: dict[str, Any], top: bool) -> None:
        for k in ("dtype", "torch_dtype"):
            if k in d:
                d[k] = name
        if top and "dtype" not in d and "torch_dtype" not in d:
            d["dtype"] = name
        if untie and (top or "tie_word_embeddings" in d):
            d["tie_word_embeddings"] = False
        for v in d.values():
            if isinstance(v, dict) and ("model_type" in v or "dtype" in v or "torch_dtype" in v):
                fix(v, False)

    fix(new, True)
    return new


def set_task_class(cfg: dict[str, Any], profile: BaseProfile, notes: list[str]) -> None:
    """The merged model is the class the adapter's task type implies (e.g. a sequence classifier): its
    ``architectures`` and, for a classification head, generic labels of the head's size."""
    if profile.task is None or cfg.get("architectures") == [profile.architecture]:
        return
    notes.append(f"config architectures set to {profile.architecture} (task type {profile.task})")
    cfg["architectures"] = [profile.architecture]
    if profile.num_labels:
        cfg.pop("id2label", None)
        cfg.pop("label2id", None)
        cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(profile.num_labels)}
        cfg["label2id"] = {f"LABEL_{i}": i for i in range(profile.num_labels)}


def _is_side_file(p: Path) -> bool:
    n = p.name
    return (
        p.is_file()
        and not n.startswith(".")
        and n not in _NOT_COPIED
        and n != "config.json"
        and not n.endswith(_WEIGHT_SUFFIXES)
    )


def copy_side_files(base_dir: Path, adapter_dir: Path, tmp: Path, notes: list[str]) -> tuple[list[dict[str, Any]], str]:
    """generation config, tokenizer, chat template, processor files: from the base, or the adapter's tokenizer."""
    chosen: dict[str, Path] = {}
    origin: dict[str, str] = {}
    for p in sorted(base_dir.iterdir()):
        if _is_side_file(p):
            chosen[p.name], origin[p.name] = p, "base"
    from loradoc.io.outputs import escapes

    adapter_tok: dict[str, Path] = {}
    for p in sorted(adapter_dir.iterdir()):
        if p.name in TOKENIZER_FILES and p.is_file():
            if escapes(p, adapter_dir):
                notes.append(f"adapter file {p.name} is a symlink pointing outside the adapter: not copied")
            else:
                adapter_tok[p.name] = p
    has_base_tok = any(n in chosen for n in _TOKENIZER_CORE)
    source = "base" if has_base_tok else "none"
    if any(n in adapter_tok for n in _TOKENIZER_CORE):
        for n in [n for n in chosen if n in TOKENIZER_FILES]:
            del chosen[n], origin[n]
        for n, p in adapter_tok.items():
            chosen[n], origin[n] = p, "adapter"
        source = "adapter"
        notes.append(f"tokenizer files from the adapter ({', '.join(sorted(adapter_tok))}), not from the base")
    elif any(n in adapter_tok for n in _CHAT_TEMPLATES):
        for n in _CHAT_TEMPLATES:
            if n in adapter_tok:
                chosen[n], origin[n] = adapter_tok[n], "adapter"
        source = "base+adapter-chat-template"
        notes.append("chat template from the adapter, tokenizer from the base")
    rows = []
    for n, p in sorted(chosen.items()):
        shutil.copyfile(p, tmp / n)
        digest = sha256_file(tmp / n)
        rows.append({"name": n, "bytes": (tmp / n).stat().st_size, "sha256": digest, "from": origin[n]})
    return rows, source


def build_manifest(
    snap: AdapterSnapshot,
    source: BaseSource,
    profile: BaseProfile,
    dtype: str,
    plan: Plan,
    files: list[dict[str, Any]],
    base_files: dict[str, str],
    tok_source: str,
    hash_sources: dict[str, str],
) -> dict[str, Any]:
    adapter_files = {
        p.name: sha256_file(p) for p in sorted(snap.directory.iterdir()) if p.is_file() and not p.name.startswith(".")
    }
    return {
        "format": 1,
        "tool": f"loradoc {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "adapter": {
            "path": str(snap.directory),
            "repo_id": snap.repo_id,
            "commit": snap.commit,
            "base_model_name_or_path": snap.config.base_model,
            "files": adapter_files,
        },
        "base": {
            "path": str(source.directory),
            "architecture": profile.architecture,
            "config_sha256": profile.config_sha256,
            "files": dict(sorted(base_files.items())),
            "weight_hashes": hash_sources,  # how each weight file's sha256 was obtained (absent: not hashed)
        },
        "versions": {d: installed_version(d) for d in ("peft", "transformers", "safetensors", "numpy")},
        "dtype": dtype,
        "merged_modules": [m["module"] for m in plan.merged],
        "merged": [{k: m[k] for k in ("module", "tensor", "kind", "r", "alpha", "scale", "dora")} for m in plan.merged],
        "replaced": plan.replaced,
        "untied_embeddings": plan.untied,
        "tokenizer_source": tok_source,
        "notes": plan.notes,
        "outputs": {f["name"]: f["sha256"] for f in files},
    }
