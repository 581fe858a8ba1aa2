"""Which model class an adapter loads into: its peft task type and, for a classification head saved with the
adapter, the number of labels (pure Python: no torch)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HEAD_NAMES", "TASK_AUTO_CLASS", "ModelSpec", "head_module", "num_labels_from_tensors", "spec_for_adapter"]

# peft task type -> the transformers auto class family peft's task-specific PeftModel expects
TASK_AUTO_CLASS = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
}
# module names of the heads peft's task models save through modules_to_save
HEAD_NAMES = ("classifier", "score", "qa_outputs")
_HEAD_WRAPPERS = (".modules_to_save.default", ".original_module", ".base_layer")


@dataclass(frozen=True)
class ModelSpec:
    """The model class an adapter is loaded into: ``task`` (a key of TASK_AUTO_CLASS, None for config.json's
    ``architectures[0]``) and ``num_labels`` of a classification head."""

    task: str | None = None
    num_labels: int | None = None

    @property
    def is_default(self) -> bool:
        return self.task is None

    def cache_suffix(self) -> str:
        if self.task is None:
            return ""
        return f"-{self.task.lower()}" + (f"-{self.num_labels}" if self.num_labels else "")


def head_module(key: str) -> str | None:
    """The head (``classifier`` / ``score`` / ``qa_outputs``) a file key belongs to, else None."""
    body = key
    while body.startswith("base_model.model."):
        body = body[len("base_model.model.") :]
    root = body.split(".", 1)[0]
    return root if root in HEAD_NAMES else None


def num_labels_from_tensors(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The label count of a classification head saved with the adapter (its output projection's rows)."""
    best: tuple[int, int] | None = None  # (preference, rows)
    for key, shape in shapes.items():
        head = head_module(key)
        if head is None or not shape:
            continue
        module = key.rsplit(".", 1)[0]
        for w in _HEAD_WRAPPERS:
            module = module.replace(w, "")
        tail = module.rsplit(".", 1)[-1]
        if key.endswith(".lora_B.weight") and tail in ("lora_B",):
            tail = module.rsplit(".", 2)[-2]
        if not (key.endswith(".weight") or key.endswith(".bias")):
            continue
        pref = 2 if tail == "out_proj" else 1 if tail in HEAD_NAMES else 0
        if pref and (best is None or pref > best[0]):
            best = (pref, int(shape[0]))
    return best[1] if best else None


def spec_for_adapter(task_type: str | None, shapes: dict[str, tuple[int, ...]]) -> ModelSpec:
    """The model class family ``task_type`` implies; classification heads take ``num_labels`` from the file."""
    task = (task_type or "").upper() or None
    if task not in TASK_AUTO_CLASS:
        return ModelSpec()
    labels = num_labels_from_tensors(shapes) if task in ("SEQ_CLS", "TOKEN_CLS") else None
    return ModelSpec(task, labels)
