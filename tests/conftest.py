"""Shared pytest fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from loradoc.demo.builder import ExampleSet, build_example


@pytest.fixture(scope="session")
def example_root(tmp_path_factory: pytest.TempPathFactory) -> ExampleSet:
    """Every tiny base and example adapter, built once per session (real transformers + peft).

    Read-only: a test that needs a broken variant copies one into its tmp_path with
    ``tests/builders.py:rewrite_adapter``."""
    return build_example(tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="session")
def llama_cpp_src() -> Path:
    """llama.cpp's source tree (reference converters), from the llama-cpp-python sdist on the package registry.

    Cannot be had -> the test fails (never skips): a skipped check in CI is a check that does not exist."""
    from llama_cpp_source import LlamaCppSourceError, llama_cpp_source_dir

    try:
        return llama_cpp_source_dir()
    except LlamaCppSourceError as e:
        why = str(e)
    pytest.fail(f"llama.cpp's source tree is not available: {why}", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    # CI explores the same hypothesis examples every run (a red CI must mean a regression, not a new draw);
    # local runs keep drawing new ones.
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")
    # Profiles and registries the tests build go to a private cache, never the user's.
    os.environ.setdefault("LORADOC_CACHE_DIR", tempfile.mkdtemp(prefix="loradoc-test-cache-"))
    # check-load's certificates (and the default registry) too
    os.environ.setdefault(
        "LORADOC_REGISTRY", os.path.join(tempfile.mkdtemp(prefix="loradoc-test-data-"), "registry.sqlite")
    )
