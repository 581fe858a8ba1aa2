"""llama.cpp's source tree (its reference converters ``convert_lora_to_gguf.py`` / ``convert_hf_to_gguf.py`` and
their own ``conversion/`` and ``gguf-py/``), taken from the package registry: the llama-cpp-python sdist ships it
as ``vendor/llama.cpp``.

The version is the installed llama-cpp-python's (else the test extra's pin), so the converters belong to the
llama.cpp that the tests run. The tree is cached per version under ``$LORADOC_TEST_CACHE`` (default: the user
cache dir ``loradoc-tests``); ``LORADOC_LLAMA_CPP_DIR`` names a tree to use instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

DIST = "llama-cpp-python"
MARKER = "convert_lora_to_gguf.py"
REPO = Path(__file__).resolve().parent.parent


class LlamaCppSourceError(RuntimeError):
    """The source tree could not be obtained (the message says why and what to do)."""


def llama_cpp_version() -> str:
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        pass
    pin = re.search(r'"llama-cpp-python==([^"\s;]+)"', (REPO / "pyproject.toml").read_text())
    if pin is None:
        raise LlamaCppSourceError(f"{DIST} is not installed and pyproject.toml pins no version of it")
    return pin.group(1)


def cache_root() -> Path:
    env = os.environ.get("LORADOC_TEST_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path("loradoc-tests")


def llama_cpp_source_dir(version: str | None = None, root: Path | None = None) -> Path:
    """The ``vendor/llama.cpp`` folder of the llama-cpp-python sdist; downloaded and extracted once per version.

    Raises LlamaCppSourceError when it cannot be had."""
    override = os.environ.get("LORADOC_LLAMA_CPP_DIR")
    if override:
        if not (Path(override) / MARKER).is_file():
            raise LlamaCppSourceError(f"LORADOC_LLAMA_CPP_DIR={override} has no {MARKER}")
        return Path(override)
    version = version or llama_cpp_version()
    root = root or cache_root()
    dest = root / f"llama.cpp-{version}"
    if (dest / MARKER).is_file():
        return dest
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"llama.cpp-{version}.lock"), timeout=1800):
        if (dest / MARKER).is_file():  # another run finished it while this one waited
            return dest
        with tempfile.TemporaryDirectory(dir=root, prefix=f".llama.cpp-{version}-") as tmp:
            sdist = _download_sdist(version, Path(tmp) / "dl")
            tree = _extract_vendor_tree(sdist, Path(tmp) / "x")
            if dest.exists():  # a partial tree from a run that predates the atomic rename
                shutil.rmtree(dest)
            tree.rename(dest)  # same filesystem: atomic; readers see a complete tree or none
    return dest


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", DIST, "--disable-pip-version-check",
           "-d", str(into), f"{DIST}=={version}"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlamaCppSourceError(f"`{' '.join(cmd)}` failed: {e}") from e
    sdists = sorted(into.glob("*.tar.gz")) if into.is_dir() else []
    if proc.returncode != 0 or len(sdists) != 1:
        raise LlamaCppSourceError(
            f"could not download the {DIST} {version} sdist (it carries llama.cpp's converters) with\n"
            f"  {' '.join(cmd)}\nexit {proc.returncode}; pip said:\n{(proc.stdout + proc.stderr)[-3000:]}\n"
            "Fix the registry access, or set LORADOC_LLAMA_CPP_DIR to the sdist's vendor/llama.cpp folder."
        )
    return sdists[0]


def _extract_vendor_tree(sdist: Path, into: Path) -> Path:
    try:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if re.match(r"[^/]+/vendor/llama\.cpp(/|$)", m.name)]
            if not members:
                raise LlamaCppSourceError(f"{sdist.name} has no vendor/llama.cpp folder")
            tar.extractall(into, members=members, filter="data")  # refuses absolute paths, ../ escapes, odd links
    except (tarfile.TarError, OSError) as e:
        raise LlamaCppSourceError(f"{sdist.name}: cannot extract vendor/llama.cpp: {e}") from e
    (tree,) = into.glob("*/vendor/llama.cpp")
    if not (tree / MARKER).is_file():
        raise LlamaCppSourceError(f"{sdist.name}: vendor/llama.cpp has no {MARKER}")
    return tree
