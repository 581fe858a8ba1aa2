"""Which Hub endpoint to talk to: ``--endpoint``, then ``HF_ENDPOINT``, then the public default.

huggingface_hub reads HF_ENDPOINT only at import time; loradoc resolves it itself and passes it explicitly to
every call.
"""

from __future__ import annotations

import os

DEFAULT_ENDPOINT = "https://huggingface.co"


def resolve_endpoint(endpoint: str | None = None) -> str:
    ep = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return ep.rstrip("/")
