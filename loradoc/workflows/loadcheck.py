"""check-load: really load base + adapter, certify, and record the certificate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loradoc.progress import Progress
from loradoc.workflows.recording import RegistryRef, registry_of, registry_path


@dataclass
class LoadChecked:
    certificate: Any  # loradoc.verify.checkload.Certificate
    recorded: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.certificate.passed)


def check_load(
    adapter: str,
    base: str,
    *,
    device: str = "auto",
    certificate: str | Path | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    endpoint: str | None = None,
    record: bool = False,
    registry: RegistryRef = None,
    progress: Progress | None = None,
) -> LoadChecked:
    """Load ``base``'s weights and ``adapter`` with peft on ``device`` and certify the result. The certificate goes
    to ``certificate``, else to the registry's certificate store; with ``record`` it is recorded on the adapter's
    revision."""
    from loradoc.verify.checkload import check_load as run
    from loradoc.workflows.source import local_adapter

    cert = run(
        local_adapter(adapter, endpoint=endpoint),
        base,
        device=device,
        certificate=Path(certificate) if certificate else None,
        allow_pickle=allow_pickle,
        overwrite=overwrite,
        registry=registry_path(registry),
        progress=progress,
    )
    if not record:
        return LoadChecked(cert)
    with registry_of(registry) as reg:
        return LoadChecked(cert, reg.record_certificate(cert.data, path=cert.path))
