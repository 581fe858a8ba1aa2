"""Evaluating regexes that come from adapter configs, with a time bound.

peft evaluates ``target_modules`` / ``exclude_modules`` strings with ``re.fullmatch(pattern, name)`` for every
module of the base, and embeds ``modules_to_save``, ``layers_pattern`` and ``rank_pattern`` / ``alpha_pattern``
keys into its own regexes. A pattern with catastrophic backtracking (``"(.*.*)*x$"``) therefore hangs peft, and it
would hang loradoc too: Python's ``re`` runs in C holding the GIL, so no thread can interrupt it.

So every non-literal pattern is first *vetted*: Python's ``re`` (the engine peft uses, so the question is whether
peft itself would finish) evaluates it over all the base's module names in a separate process that is killed
when it runs past a time budget. A pattern that finishes is then evaluated in-process, on those names, by the
callers; a pattern that does not is a :class:`RegexProblem` (``kind="too-expensive"``), and the caller reports it
as a finding instead of ever handing it to peft. An RE2-style linear-time engine would not answer the question
that matters: RE2 matches ``"(.*.*)*x$"`` instantly while peft would still hang on it.

This module imports only the standard library (and loradoc.errors).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Sequence

from loradoc.errors import BadInputError

__all__ = ["MAX_PATTERN_CHARS", "RegexProblem", "budget_s", "is_literal", "vet"]

#: No real config needs a longer pattern (peft writes lists, and hand-written regexes are a few hundred chars).
MAX_PATTERN_CHARS = 64 << 10
_DEFAULT_BUDGET_S = 5.0

# (pattern, mode) that finished over a name set: evaluating them in-process on those names is safe.
_VETTED: set[tuple[str, str]] = set()
_NAMESETS_VETTED: set[tuple[str, str, int]] = set()


class RegexProblem(BadInputError):
    """A config regex that cannot be used: ``kind`` is ``"invalid"`` (re.error, what peft raises too),
    ``"too-long"`` or ``"too-expensive"``. Callers turn it into a finding; one that escapes is exit 2."""

    def __init__(self, kind: str, field: str, pattern: str, detail: str) -> None:
        self.kind = kind
        self.field = field
        self.pattern = pattern
        self.detail = detail
        shown = repr(pattern if len(pattern) <= 60 else pattern[:57] + "...")
        if kind == "invalid":
            msg = f"error: {detail}"  # the way peft's re.fullmatch fails (re.error's class name)
        else:
            msg = f"{field} regex {shown} is too expensive to evaluate ({detail})"
        super().__init__(msg, hint=f"fix {field} in adapter_config.json (a plain list of module names is safest)")


def budget_s() -> float:
    """Seconds a pattern may take over all the base's module names (``$LORADOC_REGEX_BUDGET_S``, default 5)."""
    try:
        v = float(os.environ.get("LORADOC_REGEX_BUDGET_S", _DEFAULT_BUDGET_S))
    except ValueError:
        return _DEFAULT_BUDGET_S
    return v if v > 0 else _DEFAULT_BUDGET_S


def is_literal(text: str) -> bool:
    """Whether ``text`` has no quantifier, group, alternation, class or escape (dots and anchors allowed): such a
    text cannot backtrack badly, alone or embedded in peft's fixed templates (which have no nested quantifier)."""
    return len(text) <= MAX_PATTERN_CHARS and re.search(r"[*+?{}()|\[\]\\]", text) is None


def _compile(pattern: str, field: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexProblem("too-long", field, pattern, f"{len(pattern)} characters, limit {MAX_PATTERN_CHARS}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning for "[[" etc.: peft would warn the same
            re.compile(pattern)
    except re.error as e:
        raise RegexProblem("invalid", field, pattern, str(e)) from None
    except (RecursionError, OverflowError, MemoryError) as e:
        raise RegexProblem("too-expensive", field, pattern, f"cannot compile: {e.__class__.__name__}") from None


_WORKER = r"""
import json, re, sys, warnings
warnings.simplefilter("ignore")
job = json.loads(sys.stdin.read())
names = job["names"]
for pattern, mode, extra in job["patterns"]:
    if mode == "pattern_keys":  # peft.utils.other.get_pattern_key over every name (re's cache thrashes)
        keys = json.loads(pattern)
        for n in names:
            for k in keys:
                if re.match(rf"(.*\.)?({k})$", n):
                    break
    else:
        fn = getattr(re.compile(pattern), mode)
        for n in extra:
            fn(n)
        for n in names:
            fn(n)
    sys.stdout.write("ok\n")
    sys.stdout.flush()
"""


#: Length of the probe strings: exponential backtracking on 64 characters never finishes, polynomial does at once.
_PROBE_LEN = 64


def probes(pattern: str) -> list[str]:
    """Strings that make a backtracking regex show its worst case, whatever the base's names are: a long run of
    each character the pattern names, with a character it does not match at the end (so every split is tried).
    A pattern that finishes on the names of one base may hang on another's (or on the real model's), so the
    verdict must not depend on that luck."""
    chars = sorted({c for c in pattern if c.isalnum() or c in "._-"} | {"a", "."})
    return [c * _PROBE_LEN + "\x00" for c in chars]


def vet(jobs: Sequence[tuple[str, str, str]], names: Sequence[str]) -> None:
    """Make sure each ``(pattern, mode, field)`` compiles and that Python's ``re`` evaluates it (``mode``:
    ``"fullmatch"`` / ``"match"``) over every name within the time budget. Raises :class:`RegexProblem`.
    Mode ``"pattern_keys"``: ``pattern`` is a JSON list of rank/alpha_pattern keys, run the way peft's
    ``get_pattern_key`` runs them (a fresh ``re.match`` per key and name).

    Literal patterns and patterns already vetted over the same names are not re-run; the rest run in one
    worker process that is killed at the budget."""
    names = list(names)
    key = hash(tuple(names))
    todo: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for pattern, mode, field in jobs:
        if mode != "pattern_keys":
            _compile(pattern, field)
        if (pattern, mode, key) in _NAMESETS_VETTED or (pattern, mode) in seen:
            continue
        seen.add((pattern, mode))
        todo.append((pattern, mode, field))
    if not todo:
        return
    payload = json.dumps(
        {"names": names, "patterns": [[p, m, [] if m == "pattern_keys" else probes(p)] for p, m, _ in todo]}
    )
    budget = budget_s()
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _WORKER],
            input=payload,
            capture_output=True,
            text=True,
            timeout=budget,
            check=False,
        )
        done = proc.stdout.count("ok\n")
        if proc.returncode != 0 and done < len(todo):
            p, _m, field = todo[done]
            raise RegexProblem("too-expensive", field, p, f"the evaluating process failed: rc {proc.returncode}")
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        done = (out.decode() if isinstance(out, bytes) else out).count("ok\n")
        p, m, field = todo[min(done, len(todo) - 1)]
        raise RegexProblem(
            "too-expensive",
            field,
            f"{len(json.loads(p))} keys" if m == "pattern_keys" else p,
            f"Python's re, which peft uses, did not finish matching it against the base's {len(names)} module "
            f"names and {_PROBE_LEN}-character probes in {budget:g} s: catastrophic backtracking",
        ) from None
    for p, m, _ in todo:
        _NAMESETS_VETTED.add((p, m, key))
        _VETTED.add((p, m))


def vetted(pattern: str, mode: str) -> bool:
    return (pattern, mode) in _VETTED
