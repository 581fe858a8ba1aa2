"""Is a ``base_model_name_or_path`` a Hugging Face Hub repo id or a folder on someone's disk?"""

from __future__ import annotations

import re

__all__ = ["CANONICAL_BARE_IDS", "is_local_path"]

# huggingface_hub's REPO_ID_REGEX (utils/_validators.py), plus its "--", ".." and ".git" rules below.
_HUB_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", flags=re.ASCII)
# First path components that name a folder on someone's disk rather than a Hub user or organisation.
_LOCAL_DIR_NAMES = frozenset(
    {
        "model", "models", "base_model", "base-model", "basemodel", "base_models", "pretrained",
        "pretrained_model", "pretrained_models", "pretrain_model", "checkpoint", "checkpoints", "ckpt",
        "ckpts",
        "output", "outputs", "out", "weights", "content", "drive", "mnt", "workspace", "tmp", "temp", "home",
        "root", "kaggle", "local", "cache", "saved_model", "saved_models", "merged", "merged_model",
        "hf_models", "hf_cache", "downloads", "results", "runs", "saves", "your", "path", "my_model",
    }
)  # fmt: skip


# Bare (org-less) ids that the Hub resolves: the legacy "canonical" models, now redirects to their orgs.
CANONICAL_BARE_IDS = frozenset(
    {
        "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "bert-base-uncased", "bert-base-cased",
        "bert-large-uncased", "bert-large-cased", "bert-base-multilingual-cased",
        "bert-base-multilingual-uncased", "bert-base-chinese", "distilbert-base-uncased",
        "distilbert-base-cased",
        "distilbert-base-multilingual-cased", "roberta-base", "roberta-large", "distilroberta-base",
        "xlm-roberta-base", "xlm-roberta-large", "t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b",
        "albert-base-v2", "albert-large-v2", "xlnet-base-cased", "openai-gpt", "ctrl",
    }
)  # fmt: skip


def is_local_path(ref: str) -> bool:
    """Whether a ``base_model_name_or_path`` names a local folder (``/content/x``, ``./m``, ``models/x``,
    ``C:\\m``, ``~/m``) rather than a Hub repo id (``org/name``, or a legacy bare ``name`` like ``gpt2``)."""
    s = ref.strip()
    if not s:
        return False
    if s.startswith(("/", "\\", "~", ".", "file:")) or "\\" in s or re.match(r"^[A-Za-z]:", s):
        return True
    if s.endswith("/"):
        return True
    parts = s.split("/")
    if len(parts) > 2:
        return True
    if not _HUB_REPO_ID.fullmatch(s) or "--" in s or ".." in s or s.endswith(".git"):
        return True  # not a valid repo id, so it can only be a path (or garbage)
    if parts[0].lower() in _LOCAL_DIR_NAMES:
        return True
    return parts[-1].lower().startswith("checkpoint-")
