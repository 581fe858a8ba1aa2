"""``loradoc check-load``: a real load of base weights + adapter with peft, and a certificate of what happened.

Checks (each recorded with its figures):
    base-load      the base checkpoint loads with no missing / unexpected / mismatched weights
    peft-load      ``PeftModel.from_pretrained`` returns (no exception); every warning is captured
    no-missing     no LoRA parameter of the model is left without a file tensor (peft's own warning + a recount)
    no-unexpected  every file tensor has a parameter in the model
    bit-exact      every LoRA parameter equals its file tensor bit for bit (compared in the file's dtype)
    lora-b-nonzero every lora_B is non-zero (an all-zero B is a no-op)
    effect         the adapter changes the logits of a probe input (adapted vs base)
    merged-match   merge_and_unload gives the same logits as the unmerged PeftModel, within dtype tolerance

Runs on CUDA when present (``--device auto``), else on the CPU, by the same code path.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc import __version__
from loradoc.diagnose.analysis import wrapped_modules
from loradoc.diagnose.dryload import capture_warnings
from loradoc.diagnose.keyfates import converted_module
from loradoc.errors import BadInputError, EnvironmentProblem
from loradoc.io.atomic import write_file_atomic
from loradoc.io.hashing import sha256_file
from loradoc.io.snapshot import PICKLE_NAME, SAFETENSORS_NAME, AdapterSnapshot, open_snapshot
from loradoc.model.layout import parse_key
from loradoc.model.profiles import get_profile, installed_version, resolve_base
from loradoc.progress import Progress, report
from loradoc.repair.apply import CERTIFICATE_NAME

_TOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}


@dataclass
class Check:
    name: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "figures": self.figures}


@dataclass
class Certificate:
    data: dict[str, Any]
    path: Path | None

    @property
    def passed(self) -> bool:
        return bool(self.data.get("passed"))

    @property
    def checks(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.data["checks"]}


def pick_device(pref: str = "auto") -> str:
    import torch

    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("no CUDA device is available", hint="use --device cpu (or auto)")
    if pref not in ("cpu", "cuda"):
        raise BadInputError(f"unknown device {pref!r}", hint="use auto, cuda or cpu")
    return pref


def adapter_file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file the certificate covers (everything but the certificate itself and dotfiles)."""
    return {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != CERTIFICATE_NAME and not p.name.startswith(".")
    }


#: certificates of check-load runs without --certificate live under the registry's data directory (beside the index:
#: ``user_data_dir("loradoc")``, or the folder of ``--registry`` / ``$LORADOC_REGISTRY``), never in the adapter
CERTIFICATE_STORE = "certificates"


def certificate_store(registry: str | os.PathLike[str] | None = None) -> Path:
    """The folder of stored certificates for the registry index ``registry`` (None: the default index)."""
    if registry is None:
        from loradoc.registry.store import default_registry_path

        registry = default_registry_path()
    return Path(registry).expanduser().parent / CERTIFICATE_STORE


def files_key(hashes: dict[str, str]) -> str:
    """One sha256 for a set of files: of the sorted ``name sha256`` lines."""
    text = "".join(f"{name}\t{sha}\n" for name, sha in sorted(hashes.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stored_certificate_path(hashes: dict[str, str], registry: str | os.PathLike[str] | None = None) -> Path:
    """``<store>/<sha256 of the weights file>/<files_key>.json``: the certificate of exactly these files."""
    weights = hashes.get(SAFETENSORS_NAME) or hashes.get(PICKLE_NAME) or "no-weights"
    return certificate_store(registry) / weights / f"{files_key(hashes)}.json"


def find_stored_certificate(
    hashes: dict[str, str], registry: str | os.PathLike[str] | None = None
) -> tuple[Path | None, Path | None]:
    """(the stored certificate of exactly these files or None, the newest one for the same weights file or None:
    it names what changed since)."""
    exact = stored_certificate_path(hashes, registry)
    if exact.is_file():
        return exact, exact
    try:
        same_weights = [p for p in exact.parent.glob("*.json") if p.is_file()]
    except OSError:
        same_weights = []
    newest = max(same_weights, key=lambda p: p.stat().st_mtime, default=None)
    return None, newest


def model_param_name(key: str, profile: Any) -> str:
    """The PeftModel parameter a file key loads into (adapter name ``default``)."""
    p = parse_key(key)
    module = converted_module(p, profile) or p.module
    param = p.param
    for stem in ("lora_A", "lora_B", "lora_magnitude_vector"):
        if param.startswith(stem + "."):
            param = f"{stem}.default.{param[len(stem) + 1 :]}"
            break
    else:
        if param in ("lora_embedding_A", "lora_embedding_B"):
            param = f"{param}.default"
    return f"base_model.model.{module}.{param}"


def _bytes_of(t: Any) -> bytes:
    import torch

    t = t.detach().contiguous().cpu().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _probe_ids(model: Any, device: str) -> Any:
    import torch

    vocab = int(getattr(model.config.get_text_config(), "vocab_size", 256) or 256)
    return (torch.arange(16, device=device) * 7 + 2).remainder(vocab).unsqueeze(0)


def probe_inputs(model: Any, ids: Any) -> dict[str, Any]:
    """A probe forward's inputs: encoder-decoders (T5, BART, M2M100/NLLB, ...) also get decoder inputs (the
    model's decoder start token, then the probe ids shifted by one)."""
    cfg = model.config
    inputs: dict[str, Any] = {"input_ids": ids}
    if getattr(cfg, "is_encoder_decoder", False):
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is None:
            start = getattr(cfg, "pad_token_id", None) or 0
        dec = ids.clone()
        dec[:, 1:] = ids[:, :-1]
        dec[:, 0] = int(start)
        inputs["decoder_input_ids"] = dec
    return inputs


def _logits(model: Any, ids: Any) -> Any:
    """The output the probe compares: the last position's LM logits, a classification head's logits, or the
    last hidden state (feature extraction / models without a head)."""
    import torch

    with torch.no_grad():
        out = model(**probe_inputs(model, ids))
    for name in ("logits", "start_logits", "last_hidden_state"):
        t = getattr(out, name, None)
        if t is not None:
            break
    else:
        t = out[0]
    if t.dim() == 3:  # (batch, seq, vocab | labels | hidden)
        t = t[0, -1]
    elif t.dim() == 2:  # (batch, labels | seq)
        t = t[0]
    return t.float().cpu()


def check_load(
    adapter: str,
    base: str,
    *,
    device: str = "auto",
    certificate: Path | None = None,
    write: bool = True,
    allow_pickle: bool = False,
    snapshot: AdapterSnapshot | None = None,
    overwrite: bool = False,
    registry: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Certificate:
    """Load and certify. The certificate goes to ``certificate`` when given (an existing file only with
    ``overwrite``), else to the registry's certificate store (:func:`stored_certificate_path`); the adapter and the
    base are never written to. ``progress(done, total, phase)`` is called before each phase and before the
    certificate is written; what it raises (:class:`Cancelled`) stops the load with nothing written."""
    from loradoc.io.outputs import guard_outputs

    source = resolve_base(base)
    if source.shipped or not any(source.directory.glob("*.safetensors")):
        raise BadInputError(
            f"check-load needs the base weights; {base} has only a config",
            hint="pass a local base snapshot directory (loradoc pull REPO, or the HF cache snapshot path)",
        )
    snap = snapshot or open_snapshot(adapter, allow_pickle=allow_pickle)
    hashes = adapter_file_hashes(snap.directory)
    path = None
    if write:
        if certificate is not None:
            path = Path(certificate).expanduser()
            # ADAPTER/loradoc-certificate.json, named explicitly, is allowed (publish reads it; it is not one of the
            # files the certificate covers), but never inside a Hugging Face cache snapshot
            guard_outputs(
                [("--certificate", path)],
                adapter=snap.directory,
                base=source.directory,
                overwrite=overwrite,
                allow_inside=[snap.directory / CERTIFICATE_NAME],
            )
        else:
            path = stored_certificate_path(hashes, registry)
            guard_outputs([("certificate", path)], adapter=snap.directory, base=source.directory, may_exist=[path])
    from loradoc.diagnose.doctor import spec_of

    spec = spec_of(snap)
    profile = get_profile(source, spec=spec)

    import torch
    import transformers
    from peft import PeftModel

    transformers.utils.logging.disable_progress_bar()
    dev = pick_device(device)
    report(progress, 0, 4, "loading the base")
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    checks: list[Check] = []
    captured: list[str] = []
    arch = profile.architecture
    model_cls = getattr(transformers, arch)
    kwargs: dict[str, Any] = {}
    if spec.num_labels:
        # a base checkpoint saved as a classifier with another label count: its head is replaced by the adapter's
        kwargs["num_labels"] = spec.num_labels
        kwargs["ignore_mismatched_sizes"] = True
    from loradoc.io.safetensors import read_header

    for weights in sorted(source.directory.glob("*.safetensors")):
        read_header(weights)  # a truncated or malformed base file is bad input (exit 2), not a crash in transformers
    with capture_warnings() as (logs, caught):
        model, info = model_cls.from_pretrained(source.directory, dtype=dtype, output_loading_info=True, **kwargs)
    captured += [str(w.message) for w in caught] + list(logs)
    # a task head (classifier / score) is not in a pretrained base checkpoint: the adapter brings it
    heads = tuple(f"{m}." for m in wrapped_modules(snap.config, profile))
    base_missing = [k for k in info.get("missing_keys", []) if not k.startswith(heads)]
    from_adapter = [k for k in info.get("missing_keys", []) if k.startswith(heads)]
    unexpected = list(info.get("unexpected_keys", []))
    # a task model (classifier, seq2seq, ...) built from a checkpoint saved by another head's class: that
    # class's own head (e.g. an MLM's lm_head.*) is unused, not a loading problem
    unused = unexpected if profile.task is not None else []
    unexpected = [k for k in unexpected if k not in unused]
    mismatched = [str(m) for m in info.get("mismatched_keys", [])]
    from_adapter += [m for m in mismatched if any(m.lstrip("('\"").startswith(h) for h in heads)]
    mismatched = [m for m in mismatched if m not in from_adapter]
    base_bad = base_missing + unexpected + mismatched
    checks.append(
        Check(
            "base-load",
            not base_bad,
            {
                "missing": len(base_missing),
                "head_from_adapter": len(from_adapter),
                "unused_other_head": len(unused),
                "problems": base_bad[:20],
            },
        )
    )
    model = model.to(dev).eval()
    ids = _probe_ids(model, dev)
    base_logits = _logits(model, ids)
    report(progress, 1, 4, "loading the adapter")

    from loradoc.model.peft_rules import plan_injection

    # a config regex peft would hang on is never handed to peft
    regex_problem = plan_injection(snap.config, profile).regex_problem
    with capture_warnings() as (logs, caught):
        try:
            if regex_problem is not None:
                raise RuntimeError(f"regex-too-expensive: {regex_problem.message}")
            pm = PeftModel.from_pretrained(model, str(snap.directory))
            error = None
        except Exception as e:  # noqa: BLE001 - the certificate records what peft raised
            pm, error = None, f"{e.__class__.__name__}: {' '.join(str(e).split())[:300]}"
    peft_msgs = [str(w.message) for w in caught] + list(logs)
    captured += peft_msgs
    checks.append(Check("peft-load", error is None, {"error": error, "warnings": len(peft_msgs)}))
    report(progress, 2, 4, "checks")
    if pm is not None:
        checks += _adapter_checks(pm, snap, profile, ids, base_logits, dtype, peft_msgs)

    cert = {
        "format": 1,
        "tool": f"loradoc {__version__}",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "adapter": {"path": str(snap.directory), "repo_id": snap.repo_id, "commit": snap.commit, "files": hashes},
        "base": {
            "path": str(source.directory),
            "architecture": arch,
            "config_sha256": profile.config_sha256,
            "weights": {p.name: p.stat().st_size for p in sorted(source.directory.glob("*.safetensors"))},
        },
        "versions": {
            "python": platform.python_version(),
            **{d: installed_version(d) for d in ("torch", "transformers", "peft", "safetensors")},
        },
        "device": {
            "type": dev,
            "name": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or platform.machine(),
            "dtype": str(dtype).removeprefix("torch."),
        },
        "checks": [c.to_json() for c in checks],
        "passed": all(c.passed for c in checks),
        "warnings": captured[:50],
    }
    report(progress, 3, 4, "writing the certificate")
    if path is not None:  # temp file beside it + os.replace: an existing file is replaced, never truncated
        data = (json.dumps(cert, indent=2) + "\n").encode()
        write_file_atomic(path, data, overwrite=overwrite or certificate is None)
    return Certificate(cert, path)


def _adapter_checks(
    pm: Any, snap: AdapterSnapshot, profile: Any, ids: Any, base_logits: Any, dtype: Any, peft_msgs: list[str]
) -> list[Check]:
    import ast
    import re

    import torch

    checks: list[Check] = []
    params = dict(pm.named_parameters())
    lora_params = {n: p for n, p in params.items() if ".lora_" in n and ".default" in n}
    file_tensors = _file_tensors(snap)
    matched: set[str] = set()
    unexpected: list[str] = []
    not_exact: list[str] = []
    wrapped = wrapped_modules(snap.config, profile)
    for key, t in file_tensors.items():
        name = model_param_name(key, profile)
        p = params.get(name)
        if p is None:  # a module saved whole (modules_to_save / task head) loads into the wrapper's trained copy
            body = name[len("base_model.model.") :]
            m = next((w for w in wrapped if body.startswith(w + ".")), None)
            if m is not None:
                p = params.get(f"base_model.model.{m}.modules_to_save.default.{body[len(m) + 1 :]}")
                name = f"base_model.model.{m}.modules_to_save.default.{body[len(m) + 1 :]}"
        if p is None:
            unexpected.append(key)
            continue
        matched.add(name)
        if p.shape != t.shape or _bytes_of(p.detach().to(t.dtype)) != _bytes_of(t):
            not_exact.append(key)
    missing = sorted(n for n in lora_params if n not in matched)
    warned: list[str] = []
    for m in peft_msgs:
        hit = re.search(r"Found missing adapter keys while loading the checkpoint: (\[.*\])", m, re.S)
        if hit:
            warned = ast.literal_eval(hit.group(1))
    checks.append(
        Check(
            "no-missing",
            not missing and not warned,
            {"missing": len(missing), "peft_warned_missing": len(warned), "keys": missing[:20]},
        )
    )
    checks.append(Check("no-unexpected", not unexpected, {"unexpected": len(unexpected), "keys": unexpected[:20]}))
    checks.append(
        Check(
            "bit-exact",
            bool(matched) and not not_exact,
            {"compared": len(matched), "identical": len(matched) - len(not_exact), "different": not_exact[:20]},
        )
    )
    b_params = {n: p for n, p in lora_params.items() if ".lora_B." in n or ".lora_embedding_B." in n}
    zero_b = sorted(n for n, p in b_params.items() if not bool(torch.any(p != 0)))
    checks.append(
        Check(
            "lora-b-nonzero",
            bool(b_params) and not zero_b,
            {"lora_B": len(b_params), "all_zero": len(zero_b), "keys": zero_b[:20]},
        )
    )
    adapted = _logits(pm, ids)
    effect = float(torch.max(torch.abs(adapted - base_logits)))
    checks.append(
        Check(
            "effect",
            effect > 0,
            {"max_abs_logit_delta": effect, "rel": effect / max(1e-12, float(torch.max(torch.abs(base_logits))))},
        )
    )
    merged = pm.merge_and_unload()
    merged_logits = _logits(merged, ids)
    diff = float(torch.max(torch.abs(merged_logits - adapted)))
    scale = max(1.0, float(torch.max(torch.abs(adapted))))
    tol = _TOL.get(str(dtype).removeprefix("torch."), 1e-3) * scale
    checks.append(Check("merged-match", diff <= tol, {"max_abs_diff": diff, "tolerance": tol}))
    return checks


def _file_tensors(snap: AdapterSnapshot) -> dict[str, Any]:
    if snap.weights_format == "pickle":
        return dict(snap._pickle_state or {})
    from safetensors.torch import load_file

    return load_file(str(snap.weights_path))


def load_certificate(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"no certificate at {path}", hint="run loradoc check-load first") from None
    except json.JSONDecodeError:
        raise BadInputError(f"{path} is not valid JSON", hint="re-run loradoc check-load") from None
