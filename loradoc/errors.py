"""One exception hierarchy for loradoc.

Every error carries a one-line message that says what went wrong *and what to do next*. The CLI maps these
classes to exit codes in exactly one place (:func:`exit_code_for`); nothing else decides exit codes.

Exit codes:
    0  success / healthy
    1  the job ran, but the verdict is "not healthy" (or a check failed)
    2  bad input: the user must change what they passed in
    3  environment problem: missing optional dependency, network, device
    4  nothing to do: the target already holds exactly the result (e.g. ``publish`` of files equal to the
       Hub head); nothing was written
"""

from __future__ import annotations


class LoradocError(Exception):
    """Base class. ``message`` is one line; ``hint`` is the next step for the user."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = " ".join(message.split())
        self.hint = " ".join(hint.split()) if hint else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        if self.hint:
            return f"{self.message}; next: {self.hint}"
        return self.message


class BadInputError(LoradocError):
    """Something the user passed in is unusable (exit 2)."""

    exit_code = 2


class MissingFileError(BadInputError):
    """A required file is not there."""


class MalformedSafetensorsError(BadInputError):
    """A safetensors file is truncated or its header is invalid."""


class NotPeftConfigError(BadInputError):
    """An ``adapter_config.json`` that is not a PEFT adapter config (MLX, AdapterHub, a model config...)."""


class MalformedConfigError(BadInputError):
    """A JSON/TOML file that cannot be parsed or lacks required fields."""


class UnknownArchitectureError(BadInputError):
    """A base whose architecture transformers (or loradoc) does not know."""


class PickleRefusedError(BadInputError):
    """Weights are only available as a pickle ``.bin``; loradoc will not unpickle without consent."""


class UnknownBaseError(BadInputError):
    """``--base`` is neither a local directory nor a shipped base id."""


class EnvironmentProblem(LoradocError):
    """A missing optional dependency, a device or network problem (exit 3)."""

    exit_code = 3


class NothingToDo(LoradocError):
    """The target already holds exactly what the command would write, so nothing was written (exit 4).

    Not a failure, but not a success either: a script that expects a new commit/file can tell the two apart."""

    exit_code = 4


class Cancelled(LoradocError):
    """The user stopped a job (a progress callback raised it); nothing was written or recorded (exit 130)."""

    exit_code = 130


def exit_code_for(exc: BaseException) -> int:
    """The single mapping from exceptions to CLI exit codes."""
    if isinstance(exc, LoradocError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 70  # internal error (EX_SOFTWARE): a bug in loradoc
