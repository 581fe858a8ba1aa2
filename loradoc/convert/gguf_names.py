"""Output types and the text/tower split of the GGUF converters.

Tensor names, hyper-parameters and per-tensor rules are not restated here: they are llama.cpp's own converter
classes (``gguf_llama``). What remains is loradoc's: the ``--outtype`` values it accepts and which checkpoint
tensors belong to a vision / audio tower (never part of the text GGUF), by the base profile's towers (found from the
model's structure), with the names of other models' towers as the fallback where no profile can be had.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loradoc.errors import BadInputError, LoradocError, UnknownBaseError
from loradoc.model.layout import Towers, tower_of

#: --outtype values -> (gguf LlamaFileType name, GGMLQuantizationType name)
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
}


#: --outtype values made by llama.cpp's own quantizer (llama_model_quantize) from the fused bf16 GGUF
QUANTIZED: tuple[str, ...] = (
    "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m",
    "q6_k",
)  # fmt: skip
ALL_OUTTYPES: tuple[str, ...] = (*OUTTYPES, *QUANTIZED)


def check_outtype(outtype: str) -> str:
    key = outtype.lower()
    if key not in ALL_OUTTYPES:
        raise BadInputError(f"unknown --outtype {outtype!r}", hint=f"use one of {', '.join(ALL_OUTTYPES)}")
    return key


def is_tower_tensor(name: str, towers: Towers | None = None) -> bool:
    """A vision / audio / projector tensor (never part of the text GGUF); ``towers``: the base profile's."""
    return tower_of(name, towers) != "language"


@dataclass(frozen=True)
class BaseTowers:
    """A base's towers (module prefix -> kind) from its profile, or None: tower names are the only rule."""

    towers: dict[str, str] | None
    source: str  # "profile" (built or cached for this base) | "shipped profile" | "names"
    note: str | None = None  # why the names are used (None when a profile gave the towers)

    @property
    def by_names(self) -> bool:
        return self.towers is None


def base_towers(base: str | Path | None, *, allow_build: bool = True) -> BaseTowers:
    """The towers of ``base`` (a local directory, its config.json, or a shipped id) from its profile.

    ``allow_build``: build the profile on the meta device when none is cached (imports torch); without it, a
    cached profile or the shipped one for a shipped id. No base, or no profile to be had: the names of known
    towers (``vision_tower``, ``audio_tower``, ...), said in ``note``."""
    if base is None or str(base) == "":
        return BaseTowers(None, "names", "no base given: towers recognised by name only (pass --base)")
    from loradoc.model.profiles import BaseSource, get_profile, resolve_base

    p = Path(base).expanduser()
    bare = p.is_file() and p.suffix == ".json" and p.name != "config.json"
    build = (
        "`loradoc base profile DIR` builds one from a directory holding it as config.json"
        if bare
        else f"`loradoc base profile {base}` builds one"
    )
    try:
        # a bare config file (base-configs/NAME.json) is a source of its own
        source = BaseSource(str(p), p, p.parent, shipped=False) if bare else resolve_base(str(base))
        prof = get_profile(source, allow_build=allow_build)
    except UnknownBaseError:
        return BaseTowers(
            None,
            "names",
            f"towers recognised by name only: base {base} is neither a local directory nor a shipped id "
            "(pass --base with the base's directory)",
        )
    except LoradocError as e:
        why = e.message if len(e.message) <= 160 else e.message[:157] + "..."
        return BaseTowers(
            None,
            "names",
            f"towers recognised by name only: no profile of base {base} ({why}); {build}",
        )
    return BaseTowers(dict(prof.towers), "shipped profile" if source.shipped else "profile")
