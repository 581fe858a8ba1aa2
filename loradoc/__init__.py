"""loradoc: keep LoRA adapters working.

The package root imports nothing heavy: torch, transformers and peft are imported inside the functions that
need them, so ``loradoc --help`` and header-only diagnosis start fast.
"""

__version__ = "0.1.0"
