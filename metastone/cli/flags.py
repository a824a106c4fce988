"""Command-line flags generated from config dataclasses, so that each default is stated once: in the field.

``add_config_flags(parser, FitConfig)`` adds one flag per field (as TRL's ``HfArgumentParser`` does):
``--n_drafts`` and ``--n-drafts`` both work, the type comes from the annotation, the default from the field,
the help from ``field(metadata={"help": ...})`` and, where a field has them, the choices from
``metadata={"choices": ...}``. Booleans: a field that defaults to False becomes ``--name`` (store_true),
one that defaults to True becomes ``--no-name`` (store_false). ``tuple[str, ...]`` takes one or more
values, ``tuple[str, str]`` exactly two. A flag the command spells differently keeps its old names as
``aliases``; a command whose default differs from the config's on purpose passes it in ``defaults`` and
says why there. ``tests/cli/test_flags.py`` checks every generated flag's default against its field.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Iterable, Mapping


def field_default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _unwrap_optional(tp):
    """``X | None`` -> ``X``; anything else unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def flag_names(name: str, aliases: Iterable[str] = ()) -> list[str]:
    """``--a_b`` and ``--a-b`` (and the aliases), without repeats, in that order."""
    return list(dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}", *aliases]))


def add_config_flags(parser, cls, *, only: Iterable[str] | None = None, skip: Iterable[str] = (),
                     aliases: Mapping[str, Iterable[str]] | None = None, defaults: Mapping[str, Any] | None = None,
                     helps: Mapping[str, str] | None = None, required: Iterable[str] = ()) -> list[str]:
    """Add a flag per field of the dataclass ``cls`` to ``parser`` (a parser or an argument group); returns the
    field names added. ``only`` / ``skip`` select fields; ``defaults`` overrides a default (the caller says why);
    ``helps`` replaces a help text; ``required`` makes a flag required."""
    hints = typing.get_type_hints(cls)
    aliases, defaults, helps, required = dict(aliases or {}), dict(defaults or {}), dict(helps or {}), set(required)
    wanted = None if only is None else list(only)
    skip = set(skip)
    by_name = {f.name: f for f in fields(cls)}
    unknown = sorted((set(wanted or ()) | skip | set(aliases) | set(defaults) | set(helps) | required) - set(by_name))
    if unknown:
        raise TypeError(f"add_config_flags({cls.__name__}): no field(s) {unknown}")
    added = []
    for name in (wanted if wanted is not None else by_name):
        if name in skip:
            continue
        f = by_name[name]
        default = defaults.get(name, field_default(f))
        kw: dict[str, Any] = {"dest": name, "help": helps.get(name, f.metadata.get("help", ""))}
        tp = _unwrap_optional(hints[name])
        names = flag_names(name, aliases.get(name, ()))
        if tp is bool:
            if default is True:
                names = [f"--no-{name.replace('_', '-')}", f"--no_{name}", *aliases.get(name, ())]
                parser.add_argument(*dict.fromkeys(names), action="store_false", default=True, **kw)
            else:
                parser.add_argument(*names, action="store_true", default=bool(default), **kw)
            added.append(name)
            continue
        if typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                kw.update(nargs="+", type=args[0])
            else:
                kw.update(nargs=len(args), type=args[0])
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            raise TypeError(f"add_config_flags({cls.__name__}): field {name!r} has type {tp!r}, which has no flag form")
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        if name in required or default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(*names, **kw)
        added.append(name)
    return added


def config_kwargs(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The parsed values of ``names`` (lists become tuples, as the frozen configs keep them)."""
    out = {}
    for name in names:
        value = getattr(args, name)
        out[name] = tuple(value) if isinstance(value, list) else value
    return out
