"""Command-line flags generated from dataclass fields, and the vocabulary commands share.

Every command's options are a dataclass whose fields carry their help text (and choices) as
field metadata, written with `option(...)`. `add_arguments` turns the fields into argparse flags
(`micro_batch_size` -> `--micro-batch-size`), `from_args` turns a parse back into the dataclass:
defaults, choices and help live in one place, so flags, recipes and the library cannot drift.
Unset flags parse as None, so a recipe's value survives unless the flag is given. This module
imports no torch: building the parser keeps `gpt124m --help` instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

# One vocabulary for numeric precision everywhere: autocast for training and evaluation, the
# weights' dtype for generation and the demo.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WEIGHT_PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_HELP = "auto, cpu, cuda[:N] or mps"
TORCHRUN_DEVICE_HELP = DEVICE_HELP + "; under torchrun each rank takes cuda:LOCAL_RANK"
# `--compile` of generate, chat and demo; the rounding is `static_decode.CACHE_ROUND` (this module
# imports no torch), which a test holds it to.
DECODE_COMPILE_HELP = (
    "compile the decode step (torch.compile; one CUDA graph per step on CUDA): the first call of "
    "each cache length (prompt plus new tokens, rounded up to 256) waits for the compile, later "
    "ones decode faster on a GPU"
)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Any = dataclasses.MISSING,
    choices: Sequence[str] | None = None,
    aliases: Sequence[str] = (),
    positional: bool = False,
    repeat: bool = False,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a flag: `help` is its help text, `choices` its allowed
    values, `aliases` extra spellings (`--out` for `--out-dir`), `positional` makes it an
    argument rather than a flag, `repeat` collects a list from a repeated flag."""
    if not help:
        raise ValueError("every option needs its help text")
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "aliases": tuple(aliases),
        "positional": positional,
        "repeat": repeat,
        "metavar": metavar,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _int_or_word(text: str) -> int | str:
    """A flag that takes a number or a word (`--micro-batch-size auto`); validation checks it."""
    try:
        return int(text)
    except ValueError:
        return text


def _flag_type(tp: Any):
    """The argparse `type` for a field annotation (Optional unwrapped)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if {int, str} <= set(args):
            return _int_or_word
        return _flag_type(args[0])
    return tp


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _metadata(config_cls, name: str):
    """The field's option metadata, from the nearest class that declares it with `option()`:
    a subclass that only changes a default keeps its parent's help."""
    for klass in config_cls.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and "help" in fields[name].metadata:
            return fields[name].metadata
    return None


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None or default == "":
        return "none"
    if isinstance(default, list):
        return repr(default)
    return str(default)


def add_arguments(
    parser: argparse.ArgumentParser, config_cls, *, exclude: Sequence[str] = ()
) -> None:
    """One argument per field of `config_cls` that `option()` describes, in field order."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        meta = _metadata(config_cls, f.name)
        if f.name in exclude or meta is None:
            continue
        tp = _flag_type(hints[f.name])
        default = _default(f)
        help_text = meta["help"]
        if default is not dataclasses.MISSING and "default:" not in help_text:
            help_text += f" (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"help": help_text}
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["positional"]:
            parser.add_argument(f.name, type=tp, **kwargs)
            continue
        names = [flag_name(f.name), *meta["aliases"]]
        kwargs["dest"] = f.name
        kwargs["default"] = None
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        if tp is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            kwargs["type"] = item
            if meta["repeat"]:
                kwargs["action"] = "append"
            else:
                kwargs["nargs"] = "+"
        else:
            kwargs["type"] = tp
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        parser.add_argument(*names, **kwargs)


def given(args: argparse.Namespace, config_cls, *, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The fields of `config_cls` that the command line set."""
    values = {}
    for f in dataclasses.fields(config_cls):
        value = getattr(args, f.name, None)
        if value is not None and f.name not in exclude:
            values[f.name] = value
    return values


def from_args(args: argparse.Namespace, config_cls, base: dict[str, Any] | None = None):
    """`config_cls` from its defaults, then `base` (a recipe), then the flags given."""
    return config_cls(**{**(base or {}), **given(args, config_cls)})


def fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's annotation (an int is a float; a bool is neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"a list of {type_name(args[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
