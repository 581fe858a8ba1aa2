"""Tokenizer metadata for a GGUF text model, read from the base's tokenizer files (no transformers import).

Gemma 4 (what llama.cpp's converter writes, via gguf-py's ``LlamaHfVocab``):
    ``tokenizer.ggml.model = "gemma4"`` (SentencePiece-style BPE on raw UTF-8, merges from tokenizer.json),
    tokens from tokenizer.json, every score -1000, types BYTE (``<0xNN>``) / CONTROL (the tokenizer's special
    tokens) / NORMAL / USER_DEFINED (added non-special tokens and the chat-parser tokens such as ``<|channel>``),
    then the special ids, merges and chat template (gguf-py's ``SpecialVocab``), add_space_prefix false,
    add_bos true.

Gemma 3:
    with ``tokenizer.model``: ``tokenizer.ggml.model = "llama"`` (SentencePiece), pieces, scores and types read
    from the protobuf (parsed here: no sentencepiece dependency), ``added_tokens.json`` /
    ``added_tokens_decoder`` overrides and ``[PADn]`` padding up to the config's vocab_size, exactly as
    llama.cpp's ``_create_vocab_sentencepiece``;
    with only ``tokenizer.json`` (what transformers 5 saves): the Gemma 4 form above. llama.cpp's own converter
    refuses that case ("BPE pre-tokenizer was not recognized"); the tokenizer.json of a Gemma tokenizer is the same
    SentencePiece-style BPE, which llama.cpp's ``gemma4`` tokenizer implements.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradoc.errors import BadInputError, MalformedConfigError, MissingFileError

# gguf.TokenType values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: Gemma 4 tokens llama.cpp always renders (its chat parser reads them): USER_DEFINED, not CONTROL.
GEMMA4_VISIBLE = frozenset(
    {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}
)
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class TokenizerData:
    model: str  # tokenizer.ggml.model
    tokens: list[str]
    scores: list[float]
    types: list[int]
    pre: str | None = None
    add_space_prefix: bool | None = False
    add_bos: bool | None = None
    load_merges: bool = False
    source: str = ""  # which file the vocabulary came from
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedConfigError(
            f"{path} cannot be read as JSON ({e.__class__.__name__})", hint="restore the base's tokenizer files"
        ) from None


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def looks_special(token: str) -> bool:
    """llama.cpp's ``does_token_look_special``."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _hf_vocab(base: Path, *, visible: frozenset[str]) -> TokenizerData:
    """tokenizer.json -> the token list/types gguf-py's LlamaHfVocab produces (and llama.cpp's gemma4 model)."""
    path = base / "tokenizer.json"
    tj = _read_json(path)
    model = tj.get("model") if isinstance(tj, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise BadInputError(
            f"{path} is not a BPE tokenizer (model.type {model.get('type') if isinstance(model, dict) else None!r})",
            hint="Gemma bases ship a SentencePiece-style BPE tokenizer.json; restore the original tokenizer files",
        )
    if not model.get("byte_fallback", False):
        raise BadInputError(
            f"{path} has no byte_fallback: not a Gemma tokenizer",
            hint="restore the base's original tokenizer.json",
        )
    vocab: dict[str, int] = model["vocab"]
    base_size = len(vocab)
    id_to_tok: dict[int, str] = {i: t for t, i in vocab.items()}
    added_beyond: dict[int, str] = {}
    added_special: dict[str, bool] = {}
    for entry in tj.get("added_tokens") or []:
        tid, content = entry.get("id"), entry.get("content")
        if not isinstance(tid, int) or not isinstance(content, str):
            continue
        added_special[content] = bool(entry.get("special"))
        if tid >= base_size:
            added_beyond[tid] = content
        else:
            id_to_tok[tid] = content

    cfg_path = base / "tokenizer_config.json"
    tcfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    special_tokens: set[str] = set()
    for key in _SPECIAL_KEYS:
        c = _token_content(tcfg.get(key))
        if c is not None:
            special_tokens.add(c)
    for key in ("extra_special_tokens", "additional_special_tokens"):
        extra = tcfg.get(key)
        if isinstance(extra, dict):
            extra = list(extra.values())
        for item in extra or []:
            c = _token_content(item)
            if c is not None:
                special_tokens.add(c)
    all_ids = {**{i: t for i, t in id_to_tok.items()}, **added_beyond}
    token_to_id = {t: i for i, t in all_ids.items()}
    special_ids = {token_to_id[t] for t in special_tokens if t in token_to_id}

    total = base_size + len(added_beyond)
    missing = [i for i in range(total) if i not in all_ids]
    if missing:
        raise BadInputError(
            f"{path}: token ids are not contiguous (no token with id {missing[0]}; {len(missing)} gaps)",
            hint="restore the base's original tokenizer.json",
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(total):
        text = all_ids[i]
        if i < base_size:
            t = BYTE if _BYTE_RE.fullmatch(text) else CONTROL if i in special_ids else NORMAL
        else:
            t = CONTROL if i in special_ids else USER_DEFINED
        if text in visible:
            t = USER_DEFINED
        tokens.append(text)
        types.append(t)
    return TokenizerData(
        model="gemma4",
        tokens=tokens,
        scores=[-1000.0] * total,
        types=types,
        add_space_prefix=False,
        add_bos=True,
        load_merges=True,
        source=str(path),
    )


# ----------------------------------------------------------------------------------------------------------
# SentencePiece tokenizer.model (protobuf), parsed without the sentencepiece package


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Any:
    """Yield (field number, wire type, value) of one protobuf message (value: int, bytes or float bits)."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        fnum, wtype = key >> 3, key & 7
        if wtype == 0:
            val, pos = _varint(buf, pos)
        elif wtype == 1:
            val = buf[pos : pos + 8]
            pos += 8
        elif wtype == 2:
            ln, pos = _varint(buf, pos)
            val = buf[pos : pos + ln]
            pos += ln
        elif wtype == 5:
            val = buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wtype}")
        if pos > n:
            raise ValueError("truncated field")
        yield fnum, wtype, val


def read_sentencepiece_model(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, sentencepiece type) for every piece of a ``tokenizer.model`` file.

    ModelProto.pieces = field 1; SentencePiece: piece = 1 (string), score = 2 (float), type = 3 (enum: NORMAL 1,
    UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6; default NORMAL)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MissingFileError(
            f"{path}: cannot read ({e.strerror})", hint="restore the base's tokenizer.model"
        ) from None
    pieces: list[tuple[str, float, int]] = []
    try:
        for fnum, wtype, val in _fields(data):
            if fnum != 1 or wtype != 2:
                continue
            piece, score, ptype = "", 0.0, NORMAL
            for f2, w2, v2 in _fields(val):
                if f2 == 1 and w2 == 2:
                    piece = v2.decode("utf-8")
                elif f2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif f2 == 3 and w2 == 0:
                    ptype = int(v2)
            pieces.append((piece, score, ptype))
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedConfigError(
            f"{path} is not a SentencePiece model ({e})", hint="restore the base's original tokenizer.model"
        ) from None
    if not pieces:
        raise MalformedConfigError(f"{path} holds no SentencePiece pieces", hint="restore the base's tokenizer.model")
    return pieces


def _spm_vocab(base: Path, vocab_size: int | None) -> TokenizerData:
    """llama.cpp's ``_create_vocab_sentencepiece`` (Gemma 3 with tokenizer.model)."""
    pieces = read_sentencepiece_model(base / "tokenizer.model")
    n = vocab_size or len(pieces)
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i, (piece, score, ptype) in enumerate(pieces):
        if i >= n:
            break
        tokens[i] = piece
        scores[i] = score
        # sentencepiece's Is* predicates as llama.cpp checks them: USER_DEFINED pieces end up NORMAL
        types[i] = ptype if ptype in (UNKNOWN, CONTROL, UNUSED, BYTE) else NORMAL
    added_file = base / "added_tokens.json"
    if added_file.is_file():
        for key, tid in (_read_json(added_file) or {}).items():
            if isinstance(tid, int) and 0 <= tid < n:
                tokens[tid], scores[tid], types[tid] = key, -1000.0, USER_DEFINED
    cfg_path = base / "tokenizer_config.json"
    if cfg_path.is_file():
        decoder = (_read_json(cfg_path) or {}).get("added_tokens_decoder") or {}
        for sid, data in decoder.items():
            try:
                tid = int(sid)
            except ValueError:
                continue
            content = data.get("content") if isinstance(data, dict) else None
            if not isinstance(content, str) or not 0 <= tid < n:
                continue
            if data.get("special") or looks_special(content):
                types[tid] = CONTROL
            else:
                content = content.replace("\u2581", " ")
                types[tid] = USER_DEFINED
            scores[tid] = -1000.0
            tokens[tid] = content
    return TokenizerData(
        model="llama",
        pre="default",
        tokens=tokens,
        scores=scores,
        types=types,
        add_space_prefix=False,
        load_merges=False,
        source=str(base / "tokenizer.model"),
    )


def read_tokenizer(base: Path, arch: str, vocab_size: int | None) -> TokenizerData:
    """The tokenizer of the base directory in the form llama.cpp reads for ``arch``."""
    base = Path(base)
    has_spm = (base / "tokenizer.model").is_file()
    has_json = (base / "tokenizer.json").is_file()
    if arch == "gemma3" and has_spm:
        return _spm_vocab(base, vocab_size)
    if has_json:
        data = _hf_vocab(base, visible=GEMMA4_VISIBLE if arch == "gemma4" else frozenset())
        if arch == "gemma3":
            data.notes.append(
                "no tokenizer.model: the tokenizer.json vocabulary is written as llama.cpp's SentencePiece-style "
                "BPE ('gemma4' tokenizer model)"
            )
        return data
    wanted = "tokenizer.model or tokenizer.json" if arch == "gemma3" else "tokenizer.json"
    raise MissingFileError(
        f"base directory {base} has no tokenizer ({wanted})",
        hint="copy the tokenizer files of the base model into the base directory (a GGUF embeds its tokenizer)",
    )


def add_tokenizer(writer: Any, base: Path, data: TokenizerData) -> None:
    """Write the tokenizer keys (and special ids, merges, chat template) to a gguf.GGUFWriter."""
    import logging

    import gguf

    writer.add_tokenizer_model(data.model)
    if data.pre is not None:
        writer.add_tokenizer_pre(data.pre)
    writer.add_token_list(data.tokens)
    writer.add_token_scores(data.scores)
    writer.add_token_types(data.types)
    gguf_logger = logging.getLogger("gguf.vocab")
    level = gguf_logger.level
    gguf_logger.setLevel(logging.ERROR)  # SpecialVocab logs every id it sets
    try:
        special = gguf.SpecialVocab(base, load_merges=data.load_merges, n_vocab=len(data.tokens))
        if data.load_merges and not special.merges:
            raise BadInputError(f"{data.source} has no BPE merges", hint="restore the base's original tokenizer.json")
        special.add_to_gguf(writer, quiet=True)
    finally:
        gguf_logger.setLevel(level)
    if data.add_space_prefix is not None:
        writer.add_add_space_prefix(data.add_space_prefix)
    if data.add_bos is not None:
        writer.add_add_bos_token(data.add_bos)
