"""HellaSwag's data: the validation split (local file or the Hugging Face hub), parsed and checked,
and encoded under either scoring convention (see `eval/hellaswag.py`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt124m.eval.multiple_choice import EncodedItem
from gpt124m.hf.offline import hub_unreachable

log = logging.getLogger(__name__)

HUB_REPO = "Rowan/hellaswag"
SPLIT = "validation"
CONVENTIONS = ("completion", "harness")
REQUIRED_FIELDS = ("activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label")
# Where the validation parquet has lived on the hub: the dataset's own files, then the hub's
# automatic parquet conversion of the script-based original.
HUB_REVISIONS = ("main", "refs/convert/parquet")
KNOWN_FILES = (
    ("main", "data/validation-00000-of-00001.parquet"),
    ("refs/convert/parquet", "default/validation/0000.parquet"),
)


class HellaSwagUnavailable(RuntimeError):
    """The data cannot be had: the hub download failed, or pyarrow is missing for parquet. The
    message names no flag: each command adds its own (`--data`, `--hellaswag-data`)."""


LOCAL_COPY_HINT = "a local .jsonl or .parquet copy of the validation split (the official layout)"


@dataclasses.dataclass(frozen=True)
class HellaSwagItem:
    ind: int | str
    activity_label: str
    ctx_a: str
    ctx_b: str
    ctx: str
    endings: tuple[str, ...]
    label: int
    where: str = ""  # "file: line N", for error messages


def load_items(
    data: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[HellaSwagItem]:
    """The validation items from a local `.jsonl`/`.parquet` file, or (data None) from the hub.

    Raises HellaSwagUnavailable when the hub copy cannot be downloaded (or parquet cannot be
    read without pyarrow), FileNotFoundError for a missing local file and ValueError (naming
    the line) for malformed items.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    paths = [Path(data)] if data is not None else download(cache_dir=cache_dir)
    items: list[HellaSwagItem] = []
    for path in paths:
        for where, row in _read_rows(path):
            items.append(parse_item(row, where))
            if limit is not None and len(items) >= limit:
                return items
    if not items:
        raise ValueError(f"{', '.join(map(str, paths))}: no HellaSwag items")
    return items


def download(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The validation parquet file(s) of `Rowan/hellaswag`, via the Hugging Face cache."""
    from huggingface_hub import hf_hub_download, list_repo_files

    def fetch(revision: str, filename: str, local_only: bool) -> Path:
        return Path(
            hf_hub_download(
                HUB_REPO,
                filename,
                repo_type="dataset",
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_only,
            )
        )

    for revision, filename in KNOWN_FILES:  # a cached copy needs no network
        try:
            return [fetch(revision, filename, local_only=True)]
        except Exception:
            continue
    why = hub_unreachable()
    if why:
        raise HellaSwagUnavailable(
            f"HellaSwag ({HUB_REPO}) is not in the Hugging Face cache and the Hub cannot be "
            f"reached ({why})"
        )
    errors = []
    for revision in HUB_REVISIONS:
        try:
            files = list_repo_files(HUB_REPO, repo_type="dataset", revision=revision)
            wanted = sorted(f for f in files if f.endswith(".parquet") and SPLIT in f)
            if wanted:
                return [fetch(revision, f, local_only=False) for f in wanted]
            errors.append(f"{revision}: no {SPLIT} parquet file")
        except Exception as e:
            errors.append(f"{revision}: {type(e).__name__}: {e}")
    raise HellaSwagUnavailable(
        f"could not download the HellaSwag {SPLIT} split from the Hugging Face Hub "
        f"(dataset {HUB_REPO}; {'; '.join(errors)})"
    )


def _read_rows(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such HellaSwag file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}: line {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
                yield where, row
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise HellaSwagUnavailable(
                f"{path}: reading parquet needs pyarrow (pip install 'gpt124m[data]')"
            ) from None
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
        for n, row in enumerate(table.to_pylist(), 1):
            yield f"{path}: row {n}", row
    else:
        raise ValueError(f"{path}: expected a .jsonl or .parquet file, got {suffix or 'no suffix'}")


def parse_item(row: Any, where: str = "") -> HellaSwagItem:
    """Check one record of the official layout; errors name `where` (file and line)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    for key in ("activity_label", "ctx_a", "ctx_b", "ctx"):
        if not isinstance(row[key], str):
            raise ValueError(f"{where}: {key} must be a string, got {type(row[key]).__name__}")
    endings = row["endings"]
    if (
        not isinstance(endings, (list, tuple))
        or len(endings) < 2
        or not all(isinstance(e, str) for e in endings)
    ):
        raise ValueError(f"{where}: endings must be a list of at least 2 strings")
    label = row["label"]
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(
            f"{where}: label must be an integer (or a digit string), got {row['label']!r}"
            + (" (the test split has no labels)" if row["label"] == "" else "")
        )
    if not 0 <= label < len(endings):
        raise ValueError(f"{where}: label {label} is out of range for {len(endings)} endings")
    return HellaSwagItem(
        ind=row.get("ind", where),
        activity_label=row["activity_label"],
        ctx_a=row["ctx_a"],
        ctx_b=row["ctx_b"],
        ctx=row["ctx"],
        endings=tuple(endings),
        label=label,
        where=where,
    )


def preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag clean-up: WikiHow `[title]` markers become sentence
    breaks, other bracketed artefacts go, double spaces collapse once."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def harness_query(item: HellaSwagItem) -> str:
    return preprocess(item.activity_label + ": " + item.ctx_a + " " + item.ctx_b.capitalize())


def encode_items(
    items: Sequence[HellaSwagItem],
    convention: str,
    *,
    block_size: int,
    tokenizer=None,
) -> list[EncodedItem]:
    """Tokenize every item's context and endings under `convention`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}: choose {', '.join(CONVENTIONS)}")
    if tokenizer is None:
        from gpt124m.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    if convention == "completion":
        contexts = [it.ctx for it in items]
        endings = [list(it.endings) for it in items]
    else:
        contexts = [harness_query(it) for it in items]
        endings = [[preprocess(e) for e in it.endings] for it in items]
    flat = [" " + e for ends in endings for e in ends]
    if convention == "completion":
        ctx_ids = tokenizer.encode_batch(contexts)
        end_ids = tokenizer.encode_batch(flat)
    else:
        # As the harness does: encode context + continuation whole, then split at the context
        # less its trailing whitespace (a query may end in one: "...sink. [step]" -> "...sink. "),
        # which is scored with the continuation.
        ctx_ids = tokenizer.encode_batch([c.rstrip() for c in contexts])
        owners = [i for i, ends in enumerate(endings) for _ in ends]
        whole = tokenizer.encode_batch([contexts[i] + c for i, c in zip(owners, flat, strict=True)])
        end_ids = [w[len(ctx_ids[i]) :] for i, w in zip(owners, whole, strict=True)]
    out, k = [], 0
    for item, ctx, ends in zip(items, ctx_ids, endings, strict=True):
        conts = [tuple(t) for t in end_ids[k : k + len(ends)]]
        k += len(ends)
        for cont in conts:
            if not cont:
                raise ValueError(f"{item.where}: an ending encodes to no tokens")
            if len(cont) > block_size:
                raise ValueError(
                    f"{item.where}: an ending of {len(cont)} tokens exceeds the model's "
                    f"block size {block_size}"
                )
        out.append(
            EncodedItem(
                # an empty context conditions on <|endoftext|>
                context=tuple(ctx) or (tokenizer.eot_id,),
                endings=tuple(conts),
                norm_chars=tuple(len(e) for e in ends),
                label=item.label,
                ind=item.ind,
                block_size=block_size,
            )
        )
    return out
