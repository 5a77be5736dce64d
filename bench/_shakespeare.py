"""Tiny Shakespeare as token shards, split by characters: the first 90% trains, the last 10%
validates (the usual split for this corpus), prepared with `gpt124m prepare` as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gpt124m.tokenizer import get_tokenizer

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
TRAIN_SHARE = 0.9


def prepare_shakespeare(text_path: Path, out: Path) -> Path:
    """A prepared data directory under `out`: val = EOT + the last 10%, train = EOT + the rest.

    Each part is one document (one .txt file); the val part is sorted first and `--val-tokens`
    is exactly its length, so no token crosses from one split into the other.
    """
    data = out / "shards"
    if (data / "manifest.json").is_file():
        return data
    text = text_path.read_text(encoding="utf-8")
    cut = int(len(text) * TRAIN_SHARE)
    parts = out / "text"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "a_val.txt").write_text(text[cut:], encoding="utf-8")
    (parts / "b_train.txt").write_text(text[:cut], encoding="utf-8")
    val_tokens = 1 + len(get_tokenizer().encode(text[cut:]))
    cmd = [sys.executable, "-m", "gpt124m", "prepare", "--source", str(parts), "--out", str(data)]
    cmd += ["--val-tokens", str(val_tokens), "--shard-tokens", "10000000", "--workers", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    return data
