"""Turn a text source into GPT-2 token shards plus `manifest.json`.

Each document becomes `<|endoftext|>` followed by its tokens (`gpt124m.data.encoding`);
documents run on across shard boundaries. The first tokens fill the `val_*` shards, the rest the
`train_*` shards. By default validation gets one shard's worth, as in the seed's run, but no more
than a tenth of `max_tokens`, nor of a source smaller than one shard (the bundled corpus, a small
local file), so the default always leaves tokens to train on.

Resume: after each shard is renamed into place the manifest is rewritten with
`"complete": false` and, per shard, where the document stream stood at its end (document index,
tokens of that document already written, running counts). A rerun with the same settings checks
the listed shards, skips the documents they cover without encoding them, and carries on. A run
that fails before writing a shard leaves nothing behind (no manifest, no directory it created),
and so does one whose settings turn out impossible for the source: its shards could never be
completed, and would only block a retry with other settings.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt124m.data import shards as fmt
from gpt124m.data.encoding import COUNTERS, Chunk, encoded_chunks, stream_position
from gpt124m.data.revision import recorded
from gpt124m.data.sources import Source, open_source
from gpt124m.data.writer import (
    MAX_SMALL_SHARDS,
    MIN_SHARD_TOKENS,
    ShardWriter,
    too_many_small_shards,
)
from gpt124m.flags import option

log = logging.getLogger(__name__)

MAX_SHARD_TOKENS = 2**31  # 4 GiB of uint16 held while a shard fills
# The default validation split of a source smaller than one shard: this share of its tokens.
AUTO_VAL_DIVISOR = 10


@dataclass
class PrepareConfig:
    """What `gpt124m prepare` reads and writes; each field is also its flag."""

    source: str = option(
        "HuggingFaceFW/fineweb-edu",
        "hub dataset id, local file/dir/glob (.txt .jsonl .json .parquet), or 'builtin'",
    )
    out_dir: str = option("data/fineweb-edu", "output directory", aliases=("--out",))
    hf_config: str | None = option("sample-10BT", "hub dataset config ('' for none)")
    split: str = option("train", "hub dataset split")
    revision: str | None = option(None, "hub dataset commit/branch/tag (default: main's, recorded)")
    text_field: str = option("text", "field holding the text (json, parquet, hub)")
    split_lines: bool = option(
        False, "split .txt files into documents at blank lines (default: one document per file)"
    )
    shard_tokens: int = option(
        100_000_000,
        f"tokens per shard file: at least {MIN_SHARD_TOKENS:,} (one GPT-2 context), except for a "
        f"source of at most {MAX_SMALL_SHARDS} shards (tiny files by the thousand take hours)",
    )
    val_tokens: int | None = option(
        None,
        "validation tokens (default: one shard, at most a tenth of --max-tokens or of a "
        "source smaller than one shard)",
    )
    max_tokens: int | None = option(None, "cap on all tokens written (default: the whole source)")
    workers: int = option(
        default_factory=lambda: os.cpu_count() or 1, help="encoding threads (default: cores)"
    )
    progress: bool = option(True, "a progress bar on stderr")

    def __post_init__(self) -> None:
        if self.hf_config == "":
            self.hf_config = None

    def validate(self) -> None:
        if not 1 <= self.shard_tokens <= MAX_SHARD_TOKENS:  # a shard fills in memory
            raise ValueError(
                f"shard_tokens must be between 1 and {MAX_SHARD_TOKENS:,}, got {self.shard_tokens}"
            )
        if self.shard_tokens < MIN_SHARD_TOKENS and self.max_tokens is not None:
            val = min(self.resolved_val_tokens, self.max_tokens)  # the splits shard apart
            shards = -(-val // self.shard_tokens) + -(-(self.max_tokens - val) // self.shard_tokens)
            if shards > MAX_SMALL_SHARDS:
                raise too_many_small_shards(
                    self.shard_tokens, f"--max-tokens {self.max_tokens:,} needs {shards:,}"
                )
        if self.val_tokens is not None and self.val_tokens < 0:
            raise ValueError(f"val_tokens must be >= 0, got {self.val_tokens}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.text_field:
            raise ValueError("text_field is empty")

    @property
    def resolved_val_tokens(self) -> int:
        """The validation budget; the default is one shard, at most a tenth of --max-tokens
        (and `prepare` takes a tenth of a source that ends before it)."""
        if self.val_tokens is not None:
            return self.val_tokens
        if self.max_tokens is None:
            return self.shard_tokens
        return min(self.shard_tokens, max(1, self.max_tokens // AUTO_VAL_DIVISOR))


def _settings(cfg: PrepareConfig, source: Source) -> dict:
    return {
        "source": source.describe,
        "shard_tokens": cfg.shard_tokens,
        "val_tokens": "auto" if cfg.val_tokens is None else cfg.val_tokens,
        "max_tokens": cfg.max_tokens,
    }


def _missing_dirs(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = out.absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_empty(dirs: list[Path]) -> None:
    for path in dirs:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (or already gone): keep it and everything above it


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output directory {out} is not writable: {e}") from e


def _same_settings(old: dict, new: dict) -> bool:
    if new["val_tokens"] == "auto" and old.get("val_tokens") == old.get("shard_tokens"):
        old = {**old, "val_tokens": "auto"}  # what earlier versions recorded for the default
    source = old.get("source")
    if isinstance(source, dict) and new["source"].get("revision") and not source.get("revision"):
        log.warning("the earlier run recorded no commit of the dataset; resuming at the newest")
        old = {**old, "source": {**source, "revision": new["source"]["revision"]}}
    return old == new


def _previous(out: Path, settings: dict) -> dict | None:
    """The manifest of an earlier run into `out` with these settings, its shards checked."""
    path = out / fmt.MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("ignoring unreadable %s; starting over", path)
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a gpt124m token manifest; choose another output directory")
    fmt.check_fields(manifest, path)  # its shards are read, and may be deleted, by name
    if not _same_settings(manifest.get("settings") or {}, settings):
        raise ValueError(
            f"{out} holds data prepared with other settings or another source; "
            "choose another output directory or delete it"
        )
    kept = []
    for entry in manifest.get("shards", []):
        try:
            header = fmt.read_header(out / entry["name"])
        except (OSError, ValueError) as e:
            log.warning("shard %s is damaged (%s); redoing from there", entry["name"], e)
            break
        if header["tokens"] != entry["tokens"]:
            log.warning("shard %s does not match the manifest; redoing from there", entry["name"])
            break
        kept.append(entry)
    if len(kept) < len(manifest.get("shards", [])):
        manifest["complete"] = False
    manifest["shards"] = kept
    return manifest


def _progress(cfg: PrepareConfig):
    from tqdm import tqdm

    return tqdm(
        total=cfg.max_tokens,
        unit="tok",
        unit_scale=True,
        file=sys.stderr,
        disable=not cfg.progress,
        dynamic_ncols=True,
        desc="prepare",
    )


def _estimate_total(cfg: PrepareConfig, source: Source, tokens: int, chars: int, docs: int):
    """Total-token guess for the ETA: from bytes read (local files) or documents (hub info)."""
    guess = None
    if source.total_bytes and chars:
        guess = tokens * source.total_bytes / chars
    elif source.total_documents and docs:
        guess = tokens * source.total_documents / docs
    if guess is None:
        return cfg.max_tokens
    return int(guess if cfg.max_tokens is None else min(guess, cfg.max_tokens))


def prepare(cfg: PrepareConfig) -> dict:
    """Prepare `cfg.source` into token shards under `cfg.out_dir`; return the manifest (also
    written to out_dir/manifest.json). Reruns skip shards that are already complete."""
    cfg.validate()
    source = open_source(
        cfg.source,
        hf_config=cfg.hf_config,
        split=cfg.split,
        text_field=cfg.text_field,
        split_lines=cfg.split_lines,
        revision=cfg.revision or recorded(cfg.out_dir, cfg.source, cfg.hf_config, cfg.split),
    )
    out = Path(cfg.out_dir)
    created = _missing_dirs(out)
    try:
        _check_writable(out)
        return _prepare_into(cfg, source, out)
    except BaseException:
        _remove_if_empty(created)
        raise


def _prepare_into(cfg: PrepareConfig, source: Source, out: Path) -> dict:
    for stale in out.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    settings = _settings(cfg, source)
    previous = _previous(out, settings)
    if previous is not None and previous.get("complete"):
        log.info("%s is already complete (%s tokens); nothing to do", out, previous["tokens"])
        return previous

    from gpt124m.tokenizer import get_tokenizer

    tok = get_tokenizer()
    base = {
        "format": fmt.MANIFEST_FORMAT,
        "format_version": fmt.MANIFEST_FORMAT_VERSION,
        "tokenizer": tok.name,
        "vocab_size": tok.n_vocab,
        "eot_id": tok.eot_id,
        "dtype": "uint16",
        "shard_format_version": fmt.SHARD_FORMAT_VERSION,
        "settings": settings,
    }
    shards = previous["shards"] if previous else []
    writer = ShardWriter(cfg, out, base, shards)
    stream: dict | None = None  # a resume point (Chunk.after) at or before the current chunk
    if shards:
        end = shards[-1]["end"]
        start_doc, offset, stream = end["document"], end["offset"], end.get("stream")
        totals = np.array([end[k] for k in COUNTERS], dtype=np.int64)
        log.info("resuming after %d complete shards (%s tokens)", len(shards), writer.written)
    else:
        start_doc, offset = 0, 0
        totals = np.zeros(len(COUNTERS), dtype=np.int64)
    # While the default validation shard is still filling from a fresh start, where each chunk
    # began: if the source ends before the shard is full, the split point is found from these.
    marks: list | None = [] if cfg.val_tokens is None and not shards else None

    def position(chunk: Chunk, used: int) -> dict:
        at = stream_position(chunk.first, chunk.ends, chunk.counts, totals, used)
        return at if stream is None else {**at, "stream": stream}

    # A full buffer is written only once the stream goes on past it (or at the end), so a
    # source that ends exactly there can still be split.
    full_end: dict | None = None
    truncated = 0
    cut = False
    next_doc = start_doc
    t0 = time.perf_counter()
    chars_seen = docs_seen = 0
    bar = _progress(cfg)
    bar.update(writer.written)
    try:
        chunks = encoded_chunks(source, start_doc, cfg.workers, resume_at=stream)
        for chunk in chunks:
            used, offset = offset, 0
            if marks is not None:
                marks.append((writer.written - used, chunk.first, chunk.ends, chunk.counts, totals))
            n = len(chunk.tokens)
            while used < n and not writer.done:
                if writer.space == 0:
                    writer.flush(full_end)
                    marks = None
                take = min(writer.space, n - used)
                writer.add(chunk.tokens[used : used + take])
                used += take
                bar.update(take)
                if writer.space == 0:
                    full_end = position(chunk, used)
            if writer.done:
                end = position(chunk, used)
                totals = np.array([end[k] for k in COUNTERS], dtype=np.int64)
                truncated = int(end["offset"] > 0)
                # cut short only if tokens were left: here, or in a later chunk
                cut = used < n or any(len(later.tokens) for later in chunks)
                break
            totals = totals + chunk.counts.sum(axis=0)
            stream = chunk.after or stream
            next_doc = chunk.first + len(chunk.ends)
            chars_seen += chunk.chars
            docs_seen += len(chunk.ends)
            bar.total = _estimate_total(cfg, source, writer.written, chars_seen, docs_seen)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{int(totals[0]):,} docs, {docs_seen / elapsed:,.0f} docs/s")
    finally:
        bar.close()

    counters = {k: int(v) for k, v in zip(COUNTERS, totals, strict=True)}
    if writer.written == 0:
        raise ValueError(
            f"empty source: {cfg.source!r} produced no text "
            f"({counters['skipped_empty']} empty documents skipped)"
        )
    end = full_end if writer.space == 0 else {"document": next_doc, "offset": 0, **counters}
    train_tokens = sum(s["tokens"] for s in writer.shards if s["split"] == "train")
    if writer.split == "train":
        train_tokens += writer.fill
    if marks is not None and writer.split == "val" and writer.fill > 1:
        n_val = max(1, writer.fill // AUTO_VAL_DIVISOR)
        log.info(
            "the source ends after %s tokens, before the default validation shard is full: "
            "the first %s (a tenth) go to validation",
            f"{writer.fill:,}",
            f"{n_val:,}",
        )
        writer.flush_split(n_val, _position_in(marks, n_val), end)
    elif train_tokens == 0:
        writer.discard()
        raise ValueError(
            f"the source has only {writer.written:,} tokens, all within --val-tokens "
            f"{cfg.resolved_val_tokens:,}: nothing is left to train on; lower --val-tokens, or "
            "leave it out (the default takes a tenth of a source smaller than one shard)"
        )
    elif writer.fill:
        writer.flush(end)
    elapsed = time.perf_counter() - t0

    counters["documents"] += truncated
    splits = {
        split: {
            "tokens": sum(s["tokens"] for s in writer.shards if s["split"] == split),
            "shards": sum(1 for s in writer.shards if s["split"] == split),
        }
        for split in ("val", "train")
    }
    extra = {
        "tokens": writer.written,
        "documents": counters["documents"],
        "splits": splits,
        "skipped": {"empty_documents": counters["skipped_empty"]},
        "repaired": {
            "invalid_utf8_sequences_replaced": counters["replaced_sequences"],
            "documents_with_replacements": counters["repaired_documents"],
        },
        "truncated_by_max_tokens": cut,
    }
    manifest = writer.save(complete=True, extra=extra)
    if counters["replaced_sequences"]:
        log.warning(
            "replaced %d invalid UTF-8 sequences in %d documents with U+FFFD",
            counters["replaced_sequences"],
            counters["repaired_documents"],
        )
    log.info(
        "prepared %s tokens from %s documents into %s (%d val + %d train shards) in %.1fs",
        f"{writer.written:,}",
        f"{counters['documents']:,}",
        out,
        splits["val"]["shards"],
        splits["train"]["shards"],
        elapsed,
    )
    return manifest


def _position_in(marks: list, token: int) -> dict:
    """The stream position after `token` tokens, from the chunk starts recorded in `marks`."""
    for start, first, ends, counts, before in reversed(marks):
        if start <= token:
            return stream_position(first, ends, counts, before, token - start)
    raise AssertionError("no chunk starts at or before the split point")
