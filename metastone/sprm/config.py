"""``SPRMConfig``: everything needed to apply an SPRM head to a backbone, saved as ``sprm_config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from metastone.sprm.aggregate import AGGREGATIONS
from metastone.sprm.steps import CHINESE_SEPARATORS, DEFAULT_SEPARATORS, DEFAULT_THINK_TOKENS

CONFIG_FORMAT_VERSION = 1
LANG_SEPARATORS = {"en": DEFAULT_SEPARATORS, "zh": CHINESE_SEPARATORS}
# The head options (besides hidden_size) that the trainer's and train-sprm's configs expose under the
# same names and validate through SPRMConfig.checked.
HEAD_OPTIONS = ("feature_layer", "separators", "think_tokens", "aggregation", "dropout")


class HeadOptionError(ValueError):
    """A head option out of range: the field, the value received and what is expected, so that a
    caller can name the option as its users write it (``SPRMConfig.checked``)."""

    def __init__(self, field_name: str, value: Any, expected: str):
        self.field_name, self.value, self.expected = field_name, value, expected
        super().__init__(f"SPRMConfig.{field_name}={value!r} is invalid: expected {expected}.")


@dataclass(frozen=True)
class SPRMConfig:
    """How an SPRM head reads a backbone.

    Fields:
        hidden_size: the backbone's hidden size d (the head is d -> 2d -> 1).
        feature_layer: index into HF ``hidden_states`` of the feature the head reads; -2 (the residual
            stream entering the last decoder layer) in MetaStone-S1. Any index that is the input of a
            decoder layer is allowed (0 .. L-1, or -2 .. -L-1).
        separators: step separator strings; each must be one token of the model's tokenizer, or the
            rule ``"@zh"`` (the original score server's zh set, ``metastone.sprm.steps.zh_separator_ids``).
        think_tokens: ``(start, end)`` delimiting the think span, or None for models without one.
        aggregation: trajectory score from step scores: geomean (paper), min, last, product, mean.
        dropout: the head's dropout probability (active in training only).
    """

    hidden_size: int = field(metadata={"help": "backbone hidden size d"})
    feature_layer: int = field(default=-2, metadata={"help": "HF hidden_states index read by the head"})
    separators: tuple[str, ...] = field(default=DEFAULT_SEPARATORS, metadata={"help": "step separator strings"})
    think_tokens: tuple[str, str] | None = field(
        default=DEFAULT_THINK_TOKENS, metadata={"help": "(start, end) think tokens, or None"}
    )
    aggregation: str = field(default="geomean", metadata={"help": "trajectory score from step scores",
                                                           "choices": AGGREGATIONS})
    dropout: float = field(default=0.5, metadata={"help": "head dropout in training"})

    def __post_init__(self):
        """The one validation of head options (the trainer's and train-sprm's configs call it too)."""
        if not isinstance(self.hidden_size, int) or self.hidden_size <= 0:
            raise HeadOptionError("hidden_size", self.hidden_size,
                                  "a positive int, the backbone's hidden size (1536 / 3584 / 5120 for 1.5B / 7B / 32B)")
        if not isinstance(self.feature_layer, int) or self.feature_layer == -1:
            raise HeadOptionError("feature_layer", self.feature_layer, "an int naming a decoder layer's input, "
                                  "e.g. -2 (never -1, the final normed output, which the SPRM does not read)")
        seps = tuple(self.separators) if self.separators is not None else ()
        if not seps or not all(isinstance(s, str) and s for s in seps):
            raise HeadOptionError("separators", self.separators, 'a non-empty list of non-empty strings, e.g. [".\\n\\n"]')
        object.__setattr__(self, "separators", seps)
        if self.think_tokens is not None:
            think = tuple(self.think_tokens)
            if len(think) != 2 or not all(isinstance(t, str) and t for t in think):
                raise HeadOptionError("think_tokens", self.think_tokens, '["<think>", "</think>"] or null')
            object.__setattr__(self, "think_tokens", think)
        if self.aggregation not in AGGREGATIONS:
            raise HeadOptionError("aggregation", self.aggregation, f"one of {', '.join(AGGREGATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise HeadOptionError("dropout", self.dropout, "a probability in [0, 1)")

    @classmethod
    def checked(cls, name: Callable[[str], str], **values) -> "SPRMConfig":
        """``cls(**values)``, its errors naming each option as ``name(field)`` (a config key, a CLI flag)."""
        try:
            return cls(**values)
        except HeadOptionError as exc:
            raise ValueError(f"{name(exc.field_name)}={exc.value!r} is invalid: expected {exc.expected}.") from None

    @classmethod
    def for_lang(cls, hidden_size: int, lang: str = "en", **kwargs) -> "SPRMConfig":
        """Config with the separators of a language mode: ``en`` = ".\\n\\n", ``zh`` = the rule ``"@zh"``
        (every short token holding "\\n" or "。", as the original score server's ``--lang zh``)."""
        if lang not in LANG_SEPARATORS:
            raise ValueError(f"unknown lang {lang!r}; expected one of {sorted(LANG_SEPARATORS)}.")
        return cls(hidden_size=hidden_size, separators=LANG_SEPARATORS[lang], **kwargs)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["separators"] = list(self.separators)
        data["think_tokens"] = list(self.think_tokens) if self.think_tokens else None
        return {"format_version": CONFIG_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "SPRMConfig":
        data = dict(data)
        version = data.pop("format_version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {version} is not supported (expected {CONFIG_FORMAT_VERSION}).")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        if "hidden_size" not in data:
            raise ValueError(f"{source}: missing required field 'hidden_size'.")
        return cls.checked(lambda key: f"{source}: {key}", **data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SPRMConfig":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
        return cls.from_dict(data, source=str(path))


def head_field(name: str, help: str | None = None):
    """A dataclass field for the head option ``name`` with ``SPRMConfig``'s default (and help, unless given):
    the configs that expose head options (training, train-sprm) declare them with it, so each default is
    stated once, here."""
    if name not in HEAD_OPTIONS:
        raise KeyError(f"{name!r} is not a head option ({', '.join(HEAD_OPTIONS)})")
    f = next(f for f in fields(SPRMConfig) if f.name == name)
    metadata = dict(f.metadata)
    if help is not None:
        metadata["help"] = help
    return field(default=f.default, metadata=metadata)
