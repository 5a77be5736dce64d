"""Where documents come from: a Hugging Face dataset (streamed), local files, or the bundled
corpus. Every source yields `(text, replaced)` pairs in a fixed order, where `replaced` counts
invalid UTF-8 sequences turned into U+FFFD and `text` is None for a record with a null text."""

from __future__ import annotations

import contextlib
import glob
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt124m.data import builtin

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_BLANK_LINES = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_UTF8_REPLACEMENT = "\ufffd".encode()
_READ_BLOCK = 1 << 24

Document = tuple[str | None, int]


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode, replacing invalid sequences; return the text and how many were replaced."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count(_UTF8_REPLACEMENT)


@dataclass
class Source:
    """An opened source: `describe` goes into the manifest, `documents()` streams the text."""

    describe: dict
    documents: Callable[[], Iterator[Document]]
    total_bytes: int | None = None  # for the progress estimate
    total_documents: int | None = None
    # a stream that can resume where it stood: `state()` between documents, JSON-able, and
    # `resume(state)`, the documents from there on, or None for a state it cannot use (a hub
    # stream; local files re-read fast)
    state: Callable[[], Any] | None = None
    resume: Callable[[Any], Iterator[Document] | None] | None = None


def open_source(
    source: str,
    *,
    hf_config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    split_lines: bool = False,
    revision: str | None = None,
) -> Source:
    """Resolve `source`: "builtin", an existing path/dir, a glob, else a hub dataset id. A
    local copy of a hub dataset (a folder with a dataset card) is read as the hub would read it:
    one config's files and one split's (`data/test-*` is not training data), not every file in
    the tree."""
    if not source:
        raise ValueError("source is empty")
    if source == "builtin":
        return Source(builtin.describe(), lambda: ((d, 0) for d in builtin.documents()))
    if revision is not None and (Path(source).exists() or not _HUB_ID.fullmatch(source)):
        raise ValueError(f"--revision {revision}: only a hub dataset id has commits ({source})")
    configs = dataset_configs(Path(source))
    if configs is not None and (configs or len(named_splits(Path(source))) > 1):
        # the card's configs, or splits named as the hub names them (`data/test-*`)
        if configs and hf_config not in configs:
            if len(configs) > 1:
                raise ValueError(
                    f"{source} is a Hugging Face dataset with configs {', '.join(configs)}; "
                    f"choose one with --hf-config (not {hf_config!r})"
                )
            hf_config = configs[0]
        elif not configs:  # splits by file name (`data/train-*`), under the one config
            hf_config = None
        return open_hf(source, hf_config=hf_config, split=split, text_field=text_field)
    if Path(source).exists() or glob.has_magic(source):
        files = local_files(source)
        return Source(
            {
                "kind": "local",
                "path": source,
                "files": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
                "text_field": text_field,
                "split_lines": split_lines,
            },
            lambda: local_documents(files, text_field=text_field, split_lines=split_lines),
            total_bytes=sum(p.stat().st_size for p in files),
        )
    if _HUB_ID.fullmatch(source) and not source.endswith(LOCAL_SUFFIXES):
        return open_hf(
            source, hf_config=hf_config, split=split, text_field=text_field, revision=revision
        )
    raise FileNotFoundError(
        f"source not found: {source!r} is not 'builtin', an existing file or directory, a glob "
        "matching files, or a Hugging Face dataset id (owner/name)"
    )


def dataset_configs(path: Path) -> list[str] | None:
    """The config names a local dataset folder's card (README.md front matter) declares; [] for
    a card that declares none; None where `path` is no folder with a dataset card."""
    card = path / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    import yaml

    try:
        meta = yaml.safe_load(text[3:].split("\n---", 1)[0])
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict):
        return None
    entries = meta.get("configs")
    if not isinstance(entries, list):
        return []
    return [e["config_name"] for e in entries if isinstance(e, dict) and "config_name" in e]


_SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test",
                "validation": "validation", "valid": "validation", "val": "validation",
                "dev": "validation", "eval": "test", "evaluation": "test"}  # fmt: skip
_SPLIT_WORD = re.compile(r"(?:^|[-._ 0-9])([a-z]+)(?=[-._ 0-9]|$)")  # as datasets' patterns


def named_splits(folder: Path) -> set[str]:
    """The splits a folder's file and folder names mark as the hub reads them (`train-0.parquet`,
    `data/test-00000-of-00001.parquet`, `validation/x.jsonl`)."""
    found = set()
    for path in folder.rglob("*"):
        if not path.is_file() or path.suffix.lower() not in LOCAL_SUFFIXES:
            continue
        for part in path.relative_to(folder).parts:
            for word in _SPLIT_WORD.findall(part.lower()):
                if word in _SPLIT_NAMES:
                    found.add(_SPLIT_NAMES[word])
    return found


def local_files(source: str) -> list[Path]:
    """Files named by a path, directory or glob, in sorted order, each once; only supported
    suffixes. An existing path is itself even if its name holds glob characters."""
    pattern = not Path(source).exists() and glob.has_magic(source)
    if pattern:
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
        if not matches:
            raise FileNotFoundError(f"no files match {source!r}")
    else:
        matches = [Path(source)]
    files: list[Path] = []
    for path in matches:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in LOCAL_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        elif path.suffix.lower() in LOCAL_SUFFIXES:
            files.append(path)
        elif not pattern:
            raise ValueError(
                f"unsupported file type {path.suffix or '(none)'!r} for {path}; "
                f"expected one of {', '.join(LOCAL_SUFFIXES)}"
            )
    # A recursive glob ("data/**") names folders and the files in them: read each file once.
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    files = list(unique.values())
    if not files:
        raise ValueError(f"empty source: {source!r} holds no {', '.join(LOCAL_SUFFIXES)} files")
    return files


def local_documents(
    files: list[Path], *, text_field: str = "text", split_lines: bool = False
) -> Iterator[Document]:
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            if split_lines:
                yield from _paragraphs(path)
            else:
                yield decode_utf8(path.read_bytes())
        elif suffix == ".parquet":
            yield from _parquet_documents(path, text_field)
        else:
            yield from _json_documents(path, text_field)


def _paragraphs(path: Path) -> Iterator[Document]:
    """Blank-line separated paragraphs of a text file, read in blocks (split as bytes: a
    newline byte never occurs inside a UTF-8 sequence)."""
    carry = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(_READ_BLOCK)
            data = carry + block
            pieces = _BLANK_LINES.split(data)
            carry = pieces.pop() if block else b""
            for piece in pieces + ([] if block else [carry]):
                piece = piece.strip()
                if piece:
                    yield decode_utf8(piece)
            if not block:
                return


def _record_text(record: object, text_field: str, where: str) -> str | None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with field {text_field!r}")
    if text_field not in record:
        raise ValueError(
            f"{where}: missing text field {text_field!r} (fields: {', '.join(map(str, record))}); "
            "choose one with --text-field"
        )
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    return text


def _json_documents(path: Path, text_field: str) -> Iterator[Document]:
    """A `.json` array of objects (or one object), or JSON lines (`.jsonl`, or `.json`
    that turns out to hold one object per line)."""
    if path.suffix.lower() == ".json":
        raw = path.read_bytes()
        text, replaced = decode_utf8(raw)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise ValueError(f"{path}: not valid JSON: {e}") from e
        else:
            records = data if isinstance(data, list) else [data]
            for i, record in enumerate(records):
                doc = _record_text(record, text_field, f"{path}[{i}]")
                yield doc, replaced if i == 0 else 0
            return
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            text, replaced = decode_utf8(line)
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from e
            yield _record_text(record, text_field, f"{path}:{lineno}"), replaced


def _parquet_documents(path: Path, text_field: str) -> Iterator[Document]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError("reading .parquet needs pyarrow: pip install 'gpt124m[data]'") from e
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file: {e}") from e
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ValueError(
            f"{path}: missing text field {text_field!r} (columns: {', '.join(names)}); "
            "choose one with --text-field"
        )
    kind = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column {text_field!r} is {kind}, not text")
    for batch in pf.iter_batches(batch_size=4096, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            yield text, 0


def open_hf(
    source: str,
    *,
    hf_config: str | None,
    split: str,
    text_field: str,
    revision: str | None = None,
) -> Source:
    """Stream a Hugging Face dataset (also works on a local dataset directory); from the hub, at
    one commit, which the manifest records (`revision.py`)."""
    try:
        import datasets
    except ImportError as e:
        raise ValueError(
            "streaming a Hugging Face dataset needs the `data` extra: pip install 'gpt124m[data]'"
        ) from e
    where = f"Hugging Face dataset {source!r} (config {hf_config!r}, split {split!r})"
    remote = not Path(source).exists()
    if remote:
        from gpt124m.data.revision import commit_of

        revision = commit_of(source, revision)
    try:
        ds = datasets.load_dataset(
            source, name=hf_config, split=split, streaming=True, revision=revision
        )
    except Exception as e:  # the hub raises many types; all mean "cannot open this"
        hint = " (nor is it a local file or directory)" if remote else ""
        raise ValueError(f"cannot open {where}{hint}: {type(e).__name__}: {e}") from e
    features = getattr(ds, "features", None)
    if features is not None and text_field not in features:
        raise ValueError(
            f"{where} has no text field {text_field!r} (fields: {', '.join(features)}); "
            "choose one with --text-field"
        )
    total = None
    with contextlib.suppress(AttributeError, KeyError, TypeError):
        total = ds.info.splits[split].num_examples or None

    def documents() -> Iterator[Document]:
        for i, record in enumerate(ds):
            yield _record_text(record, text_field, f"{where} record {i}"), 0

    def state() -> dict:  # the format is datasets' own: a resume needs the same version
        return {"datasets": datasets.__version__, "state": ds.state_dict()}

    def resume(saved: Any) -> Iterator[Document] | None:
        if not isinstance(saved, dict) or saved.get("datasets") != datasets.__version__:
            return None  # another version wrote it: read from the start and count
        ds.load_state_dict(saved["state"])  # `datasets` opens the file it stood in, at its row
        return documents()

    describe = {"kind": "huggingface", "dataset": source, "config": hf_config, "split": split}
    describe["text_field"] = text_field
    if remote:
        describe["revision"] = revision
    # datasets 5.0.0 reports a resumed stream's state as its start (fixed in 5.0.1)
    resumable = callable(getattr(ds, "state_dict", None)) and datasets.__version__ != "5.0.0"
    return Source(
        describe,
        documents,
        total_documents=total,
        state=state if resumable else None,
        resume=resume if resumable else None,
    )


__all__ = ["Document", "Source", "decode_utf8", "local_documents", "local_files", "open_source"]
