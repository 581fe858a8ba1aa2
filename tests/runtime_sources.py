"""The serving runtimes' own validation code (vLLM, SGLang, mlx-lm), taken from their published wheels on the
package registry, without installing the runtimes.

``pip download --no-deps --only-binary :all: DIST==VERSION`` fetches the wheel once per version (the versions are
the ones ``loradoc/runtimes/rules.toml`` pins), the files named in ``MEMBERS`` are extracted under
``$LORADOC_TEST_CACHE`` (default: the user cache dir ``loradoc-tests``) and the functions are loaded from them:

- a module whose imports are light is executed as is, with stand-ins only for vLLM's own logger and for
  ``vllm.config.lora.LoRAConfig`` (a pydantic/torch dataclass: the stand-in carries ``max_lora_rank`` and accepts
  only the values of the real file's ``MaxLoRARanks`` literal, read from that file);
- a function in a heavy module (``vllm/lora/utils.py``, ``sglang/srt/lora/lora_manager.py``) is cut out of the
  file with ``ast`` and executed verbatim in a namespace holding what it references.

Never a re-implementation: the code under test is the runtime's text, byte for byte.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import os
import subprocess
import sys
import sys as _sys
import tempfile
import tomllib
import types
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "loradoc" / "runtimes" / "rules.toml"

MEMBERS = {
    "vllm": ("vllm/lora/", "vllm/config/lora.py", "vllm/model_executor/models/"),
    "sglang": ("sglang/srt/lora/", "sglang/srt/models/"),
    "mlx-lm": ("mlx_lm/",),
}


class RuntimeSourceError(RuntimeError):
    pass


def pinned_version(runtime: str) -> str:
    data = tomllib.loads(RULES.read_text())
    return data["runtimes"][{"mlx-lm": "mlx_lm"}.get(runtime, runtime)]["version"]


def cache_root() -> Path:
    env = os.environ.get("LORADOC_TEST_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path("loradoc-tests")


def source_dir(dist: str, version: str | None = None) -> Path:
    """The extracted files of ``dist``'s wheel (downloaded and extracted once per version)."""
    version = version or pinned_version(dist)
    root = cache_root()
    dest = root / f"{dist}-{version}-src"
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{dist}-{version}-src.lock"), timeout=1800):
        if marker.is_file():
            return dest
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{dist}-{version}-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-d", tmp, f"{dist}=={version}"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or len(wheels) != 1:
                raise RuntimeSourceError(
                    f"could not download the {dist} {version} wheel with {' '.join(cmd)}: "
                    f"{(proc.stdout + proc.stderr)[-2000:]}"
                )
            out = Path(tmp) / "x"
            with zipfile.ZipFile(wheels[0]) as z:
                for name in z.namelist():
                    if name.startswith(MEMBERS[dist]) and name.endswith((".py", ".md")) and ".." not in name:
                        z.extract(name, out)
            (out / ".complete").write_text(wheels[0].name)
            if dest.exists():
                import shutil

                shutil.rmtree(dest)
            out.rename(dest)
    return dest


def _function_source(path: Path, qualname: str) -> str:
    """The verbatim text of a top-level function or a class method (``Class.method``) of ``path``."""
    text = path.read_text()
    tree = ast.parse(text)
    parts = qualname.split(".")
    body = tree.body
    node: Any = None
    for part in parts:
        node = next(
            n for n in body if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) and n.name == part
        )
        body = getattr(node, "body", [])
    seg = ast.get_source_segment(text, node)
    assert seg is not None
    import textwrap

    return textwrap.dedent(" " * node.col_offset + seg)


def _assignment_source(path: Path, name: str) -> str:
    """The verbatim text of the top-level assignment ``NAME = ...`` of ``path``."""
    text = path.read_text()
    for n in ast.parse(text).body:
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets):
            seg = ast.get_source_segment(text, n)
            assert seg is not None
            return seg
    raise KeyError(name)


def _literal_values(path: Path, name: str) -> tuple[Any, ...]:
    """The values of ``NAME = Literal[...]`` at the top of ``path``."""
    tree = ast.parse(path.read_text())
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets):
            sl = n.value.slice  # type: ignore[attr-defined]
            return tuple(ast.literal_eval(e) for e in sl.elts)
    raise KeyError(name)


# ------------------------------------------------------------------------------------------------ vLLM


class _OnceLogger(logging.LoggerAdapter):
    def info_once(self, *a: Any, **k: Any) -> None:
        self.info(*a)

    def warning_once(self, *a: Any, **k: Any) -> None:
        self.warning(*a)

    def debug_once(self, *a: Any, **k: Any) -> None:
        self.debug(*a)


@functools.lru_cache(maxsize=1)
def vllm_max_lora_ranks() -> tuple[int, ...]:
    return _literal_values(source_dir("vllm") / "vllm/config/lora.py", "MaxLoRARanks")


@functools.lru_cache(maxsize=1)
def vllm_peft_helper() -> tuple[Any, Any]:
    """(PEFTHelper, LoRAConfig stand-in) from vllm/lora/peft_helper.py, executed as published."""
    src = source_dir("vllm")
    ranks = vllm_max_lora_ranks()

    class LoRAConfig:  # the field validate_legal reads; pydantic would refuse a rank outside MaxLoRARanks
        def __init__(self, max_lora_rank: int = 16) -> None:
            if max_lora_rank not in ranks:
                raise ValueError(f"max_lora_rank must be one of {ranks}")
            self.max_lora_rank = max_lora_rank

    saved = {k: _sys.modules.get(k) for k in ("vllm", "vllm.logger", "vllm.config", "vllm.config.lora")}
    try:
        for name in ("vllm", "vllm.config"):
            _sys.modules[name] = types.ModuleType(name)
        logger_mod = types.ModuleType("vllm.logger")
        logger_mod.init_logger = lambda name: _OnceLogger(logging.getLogger(name), {})  # type: ignore[attr-defined]
        _sys.modules["vllm.logger"] = logger_mod
        cfg_mod = types.ModuleType("vllm.config.lora")
        cfg_mod.LoRAConfig = LoRAConfig  # type: ignore[attr-defined]
        _sys.modules["vllm.config.lora"] = cfg_mod
        mod = types.ModuleType("vllm_peft_helper_under_test")
        mod.__file__ = str(src / "vllm/lora/peft_helper.py")
        _sys.modules[mod.__name__] = mod  # dataclasses look the module up by name
        code = compile((src / "vllm/lora/peft_helper.py").read_text(), mod.__file__, "exec")
        exec(code, mod.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                _sys.modules.pop(k, None)
            else:
                _sys.modules[k] = v
    return mod.PEFTHelper, LoRAConfig


@functools.lru_cache(maxsize=1)
def vllm_parse_fine_tuned_lora_name() -> Any:
    path = source_dir("vllm") / "vllm/lora/utils.py"
    ns: dict[str, Any] = {"WeightsMapper": object}
    exec(compile("from __future__ import annotations\n" + _function_source(path, "parse_fine_tuned_lora_name"),
                 str(path), "exec"), ns)  # fmt: skip
    return ns["parse_fine_tuned_lora_name"]


@functools.lru_cache(maxsize=1)
def vllm_is_base_embedding_weights() -> Any:
    path = source_dir("vllm") / "vllm/lora/utils.py"
    ns: dict[str, Any] = {}
    exec(compile(_function_source(path, "is_base_embedding_weights"), str(path), "exec"), ns)
    return ns["is_base_embedding_weights"]


def vllm_architectures() -> dict[str, dict[str, Any]]:
    """Every architecture in vllm/model_executor/models/registry.py: its class, whether that class (through its
    bases) implements ``SupportsLoRA`` and sets ``supports_tower_connector_lora = True``, and for the
    architectures vLLM no longer / never natively supports, that status."""
    models = source_dir("vllm") / "vllm/model_executor/models"
    classes: dict[str, tuple[list[str], dict[str, Any]]] = {}  # "module.Class" -> (bases, class attrs)
    by_name: dict[str, list[str]] = {}
    for f in sorted(models.rglob("*.py")):
        try:
            tree = ast.parse(f.read_text())
        except SyntaxError:
            continue
        rel = f.relative_to(models).with_suffix("")
        stem = rel.parts[0] if len(rel.parts) > 1 else rel.stem  # a package's classes count as the package's
        for n in tree.body:
            if not isinstance(n, ast.ClassDef):
                continue
            bases = [
                b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in n.bases
            ]
            attrs: dict[str, Any] = {}
            for st in n.body:
                tgt = (
                    st.targets[0]
                    if isinstance(st, ast.Assign)
                    else st.target
                    if isinstance(st, ast.AnnAssign)
                    else None
                )
                if isinstance(tgt, ast.Name) and getattr(st, "value", None) is not None:
                    with contextlib.suppress(ValueError):
                        attrs[tgt.id] = ast.literal_eval(st.value)  # type: ignore[arg-type]
            key = f"{stem}.{n.name}"
            classes[key] = (bases, attrs)
            by_name.setdefault(n.name, []).append(key)

    def lookup(key: str, attr: str, seen: frozenset[str] = frozenset()) -> Any:
        if key in seen or key not in classes:
            return None
        bases, attrs = classes[key]
        if attr in attrs:
            return attrs[attr]
        if attr == "supports_lora" and "SupportsLoRA" in bases:
            return True
        mod = key.split(".")[0]
        for b in bases:
            cands = [f"{mod}.{b}"] if f"{mod}.{b}" in classes else by_name.get(b, [])
            for c in cands:
                v = lookup(c, attr, seen | {key})
                if v is not None:
                    return v
        return None

    reg = ast.parse((models / "registry.py").read_text())
    out: dict[str, dict[str, Any]] = {}
    for n in reg.body:
        if not (isinstance(n, ast.Assign | ast.AnnAssign)):
            continue
        tgt = n.targets[0] if isinstance(n, ast.Assign) else n.target
        name = getattr(tgt, "id", "")
        if not isinstance(n.value, ast.Dict) or not name.endswith("_MODELS"):
            continue
        for k, v in zip(n.value.keys, n.value.values, strict=True):
            if not isinstance(k, ast.Constant):
                continue
            try:
                val = ast.literal_eval(v)
            except ValueError:
                continue
            arch = k.value
            if name in ("_PREVIOUSLY_SUPPORTED_MODELS", "_OOT_SUPPORTED_MODELS"):
                out.setdefault(arch, {"status": name.strip("_").lower().removesuffix("_models"), "note": str(val)})
                continue
            if not (isinstance(val, tuple) and len(val) >= 2):
                continue
            key = f"{val[0]}.{val[1]}"
            out.setdefault(
                arch,
                {
                    "status": "native",
                    "class": key,
                    "lora": bool(lookup(key, "supports_lora")),
                    "tower_connector_lora": bool(lookup(key, "supports_tower_connector_lora")),
                },
            )
    return out


# ------------------------------------------------------------------------------------------------ SGLang


def sglang_architectures() -> dict[str, dict[str, Any]]:
    """The architectures SGLang serves natively (``EntryClass`` of sglang/srt/models/*.py), and whether the class
    defines ``should_apply_lora`` (the hook that keeps LoRA off modules such as the vision tower)."""
    models = source_dir("sglang") / "sglang/srt/models"
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(models.glob("*.py")):
        try:
            tree = ast.parse(f.read_text())
        except SyntaxError:
            continue

        def defines(n: ast.ClassDef, fn: str, cls: dict[str, ast.ClassDef]) -> bool:
            if any(isinstance(m, ast.FunctionDef) and m.name == fn for m in n.body):
                return True
            return any(isinstance(b, ast.Name) and b.id in cls and b.id != n.name and defines(cls[b.id], fn, cls)
                       for b in n.bases)  # fmt: skip

        cls = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        hooks = {name: defines(n, "should_apply_lora", cls) for name, n in cls.items()}
        dims = {name: defines(n, "get_hidden_dim", cls) for name, n in cls.items()}
        for n in tree.body:
            if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "EntryClass" for t in n.targets):
                v = n.value
                names = [e.id for e in v.elts if isinstance(e, ast.Name)] if isinstance(v, ast.List | ast.Tuple) else (
                    [v.id] if isinstance(v, ast.Name) else [])  # fmt: skip
                for name in names:
                    out.setdefault(
                        name,
                        {
                            "module": f.stem,
                            "should_apply_lora": hooks.get(name, False),
                            "get_hidden_dim": dims.get(name, False),
                        },
                    )
    return dict(sorted(out.items()))


def sglang_default_hidden_dim_modules() -> list[str]:
    """The module names sglang/srt/lora/utils.py get_default_hidden_dim answers (others raise
    NotImplementedError): its ``module_name == "..."`` branches and the names of the constants it tests
    ``module_name in``."""
    path = source_dir("sglang") / "sglang/srt/lora/utils.py"
    fn = ast.parse(_function_source(path, "get_default_hidden_dim"))
    names: set[str] = set()
    for n in ast.walk(fn):
        if isinstance(n, ast.Compare) and isinstance(n.left, ast.Name) and n.left.id == "module_name":
            for c in n.comparators:
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    names.add(c.value)
                elif isinstance(c, ast.Name):
                    ns: dict[str, Any] = {}
                    exec(_assignment_source(path, c.id), ns)
                    names.update(ns[c.id])
    return sorted(names)


@functools.lru_cache(maxsize=1)
def sglang_params_mapping() -> dict[str, str]:
    """The ``params_mapping`` dict literal of get_normalized_target_modules."""
    path = source_dir("sglang") / "sglang/srt/lora/utils.py"
    fn = ast.parse(_function_source(path, "get_normalized_target_modules"))
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "params_mapping":
            return ast.literal_eval(n.value)
    raise KeyError("params_mapping")


@functools.lru_cache(maxsize=1)
def sglang_get_default_hidden_dim() -> Any:
    path = source_dir("sglang") / "sglang/srt/lora/utils.py"
    ns: dict[str, Any] = {}
    exec(_assignment_source(path, "DSA_INDEXER_LORA_NAMES"), ns)
    exec(compile("from __future__ import annotations\nfrom typing import Tuple\nAutoConfig = object\n"
                 + _function_source(path, "get_default_hidden_dim"), str(path), "exec"), ns)  # fmt: skip
    return ns["get_default_hidden_dim"]


@functools.lru_cache(maxsize=1)
def sglang_lora_config_class() -> Any:
    """sglang/srt/lora/lora_config.py's LoRAConfig (its only import is huggingface_hub)."""
    path = source_dir("sglang") / "sglang/srt/lora/lora_config.py"
    mod = types.ModuleType("sglang_lora_config_under_test")
    exec(compile(path.read_text(), str(path), "exec"), mod.__dict__)
    return mod.LoRAConfig


@functools.lru_cache(maxsize=1)
def sglang_validate_new_adapter() -> Any:
    """LoRAManager.validate_new_adapter, verbatim; call it with a manager-like object holding no adapters."""
    path = source_dir("sglang") / "sglang/srt/lora/lora_manager.py"
    ns: dict[str, Any] = {"logger": logging.getLogger("sglang"), "LoRAConfig": object, "LoRARef": object}
    exec(compile("from __future__ import annotations\n" + _function_source(path, "LoRAManager.validate_new_adapter"),
                 str(path), "exec"), ns)  # fmt: skip
    fn = ns["validate_new_adapter"]

    def call(lora_config: Any, name: str = "adapter") -> None:
        manager = types.SimpleNamespace(
            attn_dp_enabled=False, lora_refs={}, memory_pool=None, num_pinned_loras=0, max_loras_per_batch=8
        )
        ref = types.SimpleNamespace(lora_name=name, lora_path=f"/adapters/{name}", pinned=False)
        fn(manager, lora_config, ref)

    return call


@functools.lru_cache(maxsize=1)
def sglang_get_normalized_target_modules() -> Any:
    path = source_dir("sglang") / "sglang/srt/lora/utils.py"
    ns: dict[str, Any] = {}
    exec(compile("from __future__ import annotations\nfrom typing import Iterable, Union\n"
                 + _function_source(path, "get_normalized_target_modules"), str(path), "exec"), ns)  # fmt: skip
    return ns["get_normalized_target_modules"]


# ------------------------------------------------------------------------------------------------ mlx-lm


def mlx_install_dir() -> Path | None:
    """A private ``pip install --target`` of mlx (CPU build) + mlx-lm at the pinned versions, for a real
    ``load_adapters`` in a subprocess; None when no CPU build installs on this platform."""
    data = tomllib.loads(RULES.read_text())["runtimes"]["mlx_lm"]
    mlx_v, lm_v = data["mlx_version"], data["version"]
    root = cache_root()
    dest = root / f"mlx-{mlx_v}-mlx-lm-{lm_v}"
    if (dest / ".complete").is_file():
        return dest
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{dest.name}.lock"), timeout=1800):
        if (dest / ".complete").is_file():
            return dest
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--target",
               str(dest), f"mlx=={mlx_v}", f"mlx-cpu=={mlx_v}", f"mlx-lm=={lm_v}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            return None
        (dest / ".complete").write_text("ok")
    return dest
