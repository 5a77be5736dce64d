"""Every command's flags come from a dataclass: help, choices, defaults and aliases in one place."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import gpt124m.cli
from gpt124m.cli import build_parser
from gpt124m.flags import add_arguments, from_args, option


def subparsers(parser: argparse.ArgumentParser, prefix=()):
    """(command words, parser) for every leaf command, `eval hellaswag` included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subparsers(child, (*prefix, name))
            return
    yield prefix, parser


LEAVES = dict(subparsers(build_parser()))


def test_no_command_writes_its_flags_by_hand():
    """Only the CLI's own `-v` and train/sft's `--config` are hand-written; every other flag is a
    dataclass field."""
    allowed = {"__init__.py": 1, "train.py": 1, "sft.py": 1}
    for path in Path(gpt124m.cli.__file__).parent.glob("*.py"):
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ]
        assert len(calls) == allowed.get(path.name, 0), path.name


@pytest.mark.parametrize("words", sorted(LEAVES), ids=" ".join)
def test_every_flag_says_what_it_does(words):
    for action in LEAVES[words]._actions:
        if action.dest in ("help", "verbose"):
            continue
        assert action.help and len(action.help.split()) >= 2, (words, action.dest)
        if not action.required and action.option_strings and action.dest != "config":
            assert "default" in action.help, (words, action.dest)


def test_one_word_for_one_idea_across_commands():
    """`--precision` everywhere (no `--dtype`), `--out-dir` everywhere (no bare `--out` flag
    that is not an alias of it)."""
    for words, parser in LEAVES.items():
        strings = {s: a for a in parser._actions for s in a.option_strings}
        assert "--dtype" not in strings, words
        if "--out" in strings:
            assert strings["--out"] is strings["--out-dir"], words


def test_choices_are_the_library_constants():
    from gpt124m.flags import PRECISIONS, WEIGHT_PRECISIONS
    from gpt124m.hf.export import FORMATS
    from gpt124m.sft.template import TEMPLATES

    def choices(words, flag):
        (action,) = [a for a in LEAVES[words]._actions if flag in a.option_strings]
        return tuple(action.choices)

    assert choices(("export",), "--format") == FORMATS
    assert choices(("demo",), "--template") == choices(("chat",), "--template") == TEMPLATES
    assert choices(("eval", "loss"), "--precision") == PRECISIONS
    assert choices(("generate",), "--precision") == choices(("demo",), "--precision")
    assert choices(("generate",), "--precision") == WEIGHT_PRECISIONS


@dataclasses.dataclass(kw_only=True)
class Parent:
    name: str = option(help="a required name")
    where: str = option(help="a positional place", positional=True)
    size: int = option(3, "how many")
    mode: str = option("a", "which mode", choices=("a", "b"))
    out_dir: str = option("out", "where to write", aliases=("--out",))
    tags: list[str] = option(default_factory=list, help="a tag (repeatable)", repeat=True)
    fast: bool = option(False, "go fast")


@dataclasses.dataclass(kw_only=True)
class Child(Parent):
    size: int = 7  # a new default, the parent's help


def parse(cls, argv, base=None):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, cls)
    return from_args(parser.parse_args(argv), cls, base), parser


def test_fields_become_flags_with_their_metadata():
    got, parser = parse(Parent, ["here", "--name", "n", "--out", "o", "--tags", "x", "--tags", "y"])
    assert got == Parent(
        name="n", where="here", size=3, mode="a", out_dir="o", tags=["x", "y"], fast=False
    )
    assert parse(Parent, ["here", "--name", "n", "--fast", "--mode", "b"])[0].fast is True
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["size"] == "how many (default: 3)" and helps["fast"] == "go fast (default: off)"
    with pytest.raises(SystemExit):
        parse(Parent, ["here"])  # --name is required: the field has no default
    with pytest.raises(argparse.ArgumentError):
        parse(Parent, ["here", "--name", "n", "--mode", "c"])


def test_unset_flags_keep_the_base_and_a_subclass_keeps_the_help():
    got, parser = parse(Child, ["here", "--name", "n"], base={"size": 11, "mode": "b"})
    assert (got.size, got.mode) == (11, "b")  # a recipe's values survive unset flags
    got, _ = parse(Child, ["here", "--name", "n", "--size", "2"], base={"size": 11})
    assert got.size == 2  # a given flag wins
    assert {a.dest: a.help for a in parser._actions}["size"] == "how many (default: 7)"


def test_an_option_without_help_is_refused():
    with pytest.raises(ValueError, match="help"):
        option(1)


def test_prepare_flags_build_its_config(tmp_path):
    from gpt124m.data.prepare import PrepareConfig

    parser = LEAVES[("prepare",)]
    args = parser.parse_args(["--out", str(tmp_path), "--no-progress", "--hf-config", ""])
    cfg = from_args(args, PrepareConfig)
    assert cfg.out_dir == str(tmp_path) and cfg.progress is False and cfg.hf_config is None
    assert cfg.shard_tokens == PrepareConfig().shard_tokens


def test_an_empty_default_is_shown_as_none():
    """`(default: '')` reads as a value to type; an empty default means none was given."""
    for words, parser in LEAVES.items():
        for action in parser._actions:
            assert "(default: '')" not in (action.help or ""), (words, action.dest)
    sft_help = {a.dest: a.help for a in LEAVES[("sft",)]._actions}["base"]
    assert sft_help.endswith("required, here or in the --config recipe (default: none)")
