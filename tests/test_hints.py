"""Every command a user is told to run exists: each `loradoc ...` named in the package's messages and hints, in the
README and in docs/, names real subcommands and real options (checked against click's own command tree)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from loradoc.cli import cli

REPO = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((REPO / "loradoc").rglob("*.py")), REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_INLINE = re.compile(r"`(loradoc(?: [^`]*)?)`")
_NEXT = re.compile(r"(?:next|fix): (loradoc [^\"'`()]*)")
_LITERAL = re.compile(  # a command in a string: "loradoc NOUN [VERB]" then nothing, a placeholder or an option
    r"""f?["'](loradoc [a-z][a-z-]*(?: [a-z][a-z-]*)?(?: (?:\{|[A-Z]|--)[^"'\n]*)?)["']"""
)
_BLOCK_LINE = re.compile(r"^\s*(?:\$ )?(loradoc [^#\n]*)", re.M)


def _mentions() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path in SOURCES:
        text = path.read_text()
        found = set(_INLINE.findall(text)) | set(_NEXT.findall(text))
        if path.suffix == ".py":
            for m in _LITERAL.findall(text):  # "loradoc a ... (why), or loradoc b ..." names two commands
                parts = re.split(r", or |, then ", m)
                found |= {re.sub(r" \(.*", "", x) for x in parts if x.startswith("loradoc ")}
        if path.suffix == ".md":
            for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
                found |= set(_BLOCK_LINE.findall(block))
        out += [(f"{path.relative_to(REPO)}", m.strip()) for m in sorted(found)]
    return out


def _tokens(command: str) -> list[str]:
    text = re.sub(r"\{[^}]*\}", "X", command)  # f-string fields
    text = text.replace("[", " ").replace("]", " ").replace("|", " ")
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def check(command: str) -> str | None:
    """None when every subcommand and option of ``command`` exists, else what is wrong."""
    toks = _tokens(command)[1:]
    cmd: click.Command = cli
    path = ["loradoc"]
    while isinstance(cmd, click.Group) and toks and not toks[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), toks[0])
        if sub is None:
            if toks[0].isupper() or not toks[0].isidentifier() and "-" not in toks[0]:
                break  # a placeholder where a group expects its subcommand: the group itself is meant
            return f"{' '.join(path)} has no subcommand {toks[0]!r}"
        path.append(toks.pop(0))
        cmd = sub
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
    for t in toks:
        if t.startswith("--") and t.split("=", 1)[0] not in opts:
            return f"{' '.join(path)} has no option {t.split('=', 1)[0]}"
    return None


MENTIONS = _mentions()


def test_there_are_mentions_to_check() -> None:
    files = {f for f, _ in MENTIONS}
    assert "README.md" in files and len(MENTIONS) > 40


@pytest.mark.parametrize(("where", "command"), MENTIONS, ids=[f"{f}:{c[:60]}" for f, c in MENTIONS])
def test_every_named_command_exists(where: str, command: str) -> None:
    assert check(command) is None, f"{where}: `{command}`: {check(command)}"


def test_the_checker_catches_what_does_not_exist() -> None:
    assert check("loradoc inspect ADAPTER") == "loradoc has no subcommand 'inspect'"
    assert check("loradoc convert gguf A --base B --out X --token Y") == "loradoc convert gguf has no option --token"
    assert check("loradoc publish DIR --repo R --token T") == "loradoc publish has no option --token"
    assert check("loradoc repair --list-passes") is None
    assert check("loradoc base profile {source.name}") is None


def test_the_repair_hint_never_points_into_the_hf_cache(tmp_path) -> None:
    from types import SimpleNamespace

    from loradoc.cli.render import repair_command

    d = SimpleNamespace(verdict="repairable")
    snap = tmp_path / "hub" / "models--alice--clinical" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    cmd = repair_command(d, str(snap), "BASE")  # type: ignore[arg-type]
    assert cmd is not None and cmd.endswith("--out ./clinical-fixed") and check(cmd) is None
    assert repair_command(d, "alice/clinical@main", "BASE").endswith("--out ./clinical-fixed")  # type: ignore[arg-type]
    local = tmp_path / "mine"
    local.mkdir()
    assert repair_command(d, str(local), "BASE").endswith(f"--out {local}-fixed")  # type: ignore[arg-type]
