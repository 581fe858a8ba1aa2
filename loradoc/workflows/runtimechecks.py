"""Which serving runtimes (vLLM, SGLang, llama.cpp, mlx-lm) load an adapter; recorded with its revision."""

from __future__ import annotations

from typing import Any

from loradoc.workflows.recording import RegistryRef, registry_of


def runtimes(adapter: str, base: str | None, *, record: bool = False, registry: RegistryRef = None) -> Any:
    """The runtime table (loradoc.runtimes.RuntimeReport) of ``adapter``; ``base`` None: the architecture rules
    answer unknown. With ``record``, stored with the adapter revision."""
    from loradoc.runtimes import check_runtimes

    rep = check_runtimes(adapter, base)
    if record:
        with registry_of(registry) as reg:
            reg.record_runtimes(rep.to_json())
    return rep
