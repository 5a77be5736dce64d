"""Where an export may go: absent, empty, or (with --force) an earlier export, replaced whole.

`--force` deletes what it replaces, so it replaces only what `gpt124m export` can write again:
a folder of plain files, each a name an export writes (hidden metadata aside, though not a
git clone's `.git`), whose config.json is an export's
(`model_type` and `architectures`: gpt124m and GPT124MForCausalLM, or gpt2 and
GPT2LMHeadModel). Anything else (a run's `checkpoints/` or `metrics.jsonl`, a model directory
the trainer wrote, a stray file) is refused and left as it was: like training, which sets
aside what it replaces, export never deletes what it cannot write again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from gpt124m.hf.layout import ARCHITECTURE, EXPORT_FILES, GPT2_ARCHITECTURE, MODEL_TYPE


def check_destination(out: Path, model_dir: Path, force: bool) -> None:
    """Refuse an OUT_DIR that exporting into would lose data; make its parent."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    if out.exists() and out.resolve() == model_dir.resolve():
        raise ValueError(f"{out}: is the source model directory; export somewhere else")
    if out.exists() and out.resolve() in model_dir.resolve().parents:
        raise ValueError(f"{out}: holds the source model {model_dir}; export somewhere else")
    if out.is_dir() and any(out.iterdir()):
        why = not_an_export(out)
        if why:
            raise ValueError(
                f"{out}: exists and is not an earlier export ({why}); --force replaces only "
                "an export: choose another OUT_DIR"
            )
        if not force:
            raise ValueError(f"{out}: holds an earlier export; pass --force to replace it")
    if not out.parent.is_dir():
        out.parent.mkdir(parents=True)


def not_an_export(folder: Path) -> str | None:
    """Why `folder` is not something an export wrote, or None if it is one."""
    for entry in sorted(folder.iterdir()):
        if entry.name == ".git":  # a clone of the hub repo: replacing it loses its history
            return "holds .git, a git repository"
        if entry.name.startswith("."):
            continue  # .gitattributes, .DS_Store, `hf download`'s .cache/: metadata, not data
        if entry.is_symlink() or not entry.is_file():
            kind = "folder" if entry.is_dir() else "link or special file"
            return f"holds {entry.name}, a {kind}; an export writes plain files only"
        if entry.name not in EXPORT_FILES:
            return f"holds {entry.name}, which an export never writes"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable config.json"
    if not isinstance(config, dict):
        return "its config.json is not an export's"
    exported = ((MODEL_TYPE, [ARCHITECTURE]), ("gpt2", [GPT2_ARCHITECTURE]))
    if (config.get("model_type"), config.get("architectures")) not in exported:
        return "its config.json is not an export's: another model_type and architectures"
    return None


def move_into_place(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; an earlier export there (checked again now: the folder may
    have changed while the model was written) is replaced whole."""
    if out.is_dir() and any(out.iterdir()):
        why = not_an_export(out)
        if why:
            raise ValueError(f"{out}: changed during the export, now not an earlier export ({why})")
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / "previous")
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
