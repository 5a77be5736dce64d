"""Token shard files and the manifest of a prepared data directory.

A shard is a 64-byte little-endian header followed by the tokens as uint16:
magic `GPT124MT`, format version, dtype code, token count, vocabulary size, `<|endoftext|>` id.
The header lets a reader reject a truncated file, another tool's file or another tokenizer's
tokens before a single batch is built; the raw uint16 body stays memory-mappable.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from gpt124m.atomic import atomic_path
from gpt124m.config import GPT2_VOCAB_SIZE

MAGIC = b"GPT124MT"
SHARD_FORMAT_VERSION = 1
DTYPE_UINT16 = 1
HEADER = struct.Struct("<8sIIQII")
HEADER_SIZE = 64
SHARD_EXT = ".bin"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gpt124m-tokens"
MANIFEST_FORMAT_VERSION = 1
TOKENIZER = "gpt2"
VOCAB_SIZE = GPT2_VOCAB_SIZE
EOT_ID = 50256


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}{SHARD_EXT}"


def encode_header(n_tokens: int, *, vocab_size: int = VOCAB_SIZE, eot_id: int = EOT_ID) -> bytes:
    packed = HEADER.pack(MAGIC, SHARD_FORMAT_VERSION, DTYPE_UINT16, n_tokens, vocab_size, eot_id)
    return packed.ljust(HEADER_SIZE, b"\0")


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> str:
    """Write `tokens` atomically as a shard; return the file's sha256."""
    tokens = np.ascontiguousarray(tokens, dtype=np.uint16)
    header = encode_header(len(tokens))
    digest = hashlib.sha256(header)
    digest.update(memoryview(tokens).cast("B"))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        f.write(memoryview(tokens).cast("B"))
    return digest.hexdigest()


def read_header(path: str | os.PathLike) -> dict:
    """Parse and check a shard header against the file size; ValueError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard missing: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise ValueError(
            f"corrupt shard {path}: {size} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, version, dtype, n_tokens, vocab_size, eot_id = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ValueError(f"corrupt shard {path}: bad magic {magic!r}, expected {MAGIC!r}")
    if version != SHARD_FORMAT_VERSION:
        raise ValueError(
            f"shard {path} has format version {version}; this gpt124m reads version "
            f"{SHARD_FORMAT_VERSION}"
        )
    if dtype != DTYPE_UINT16:
        raise ValueError(f"corrupt shard {path}: unknown dtype code {dtype}")
    expected = HEADER_SIZE + 2 * n_tokens
    if size != expected:
        raise ValueError(
            f"corrupt shard {path}: size mismatch, header says {n_tokens:,} tokens "
            f"({expected:,} bytes) but the file has {size:,} bytes"
        )
    return {"tokens": n_tokens, "vocab_size": vocab_size, "eot_id": eot_id, "version": version}


def load_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-mapped, read-only uint16 view of a shard's tokens."""
    n_tokens = read_header(path)["tokens"]
    if n_tokens == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_SIZE, shape=(n_tokens,))


# Shards whose token ids were checked by this process, by (path, inode, size, mtime): a run that
# reopens its val split at every evaluation scans each file once.
_IDS_CHECKED: set[tuple] = set()


def check_ids(path: Path, tokens: np.ndarray) -> None:
    """Refuse a shard holding ids outside the vocabulary (bytes changed after `prepare` wrote
    them): the embedding lookup would fail mid-run, on CUDA with a device-side assert that kills
    the process. A max over the memory map costs 15-130 ms per 100M tokens in the page cache;
    from a cold disk it reads the shard's 200 MB once (what training reads anyway), where the
    manifest's sha256 would cost ~0.3 s more on every rank, to catch damage no step fails on."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _IDS_CHECKED:
        return
    if len(tokens) and int(tokens.max()) >= VOCAB_SIZE:
        where = int(np.argmax(tokens >= VOCAB_SIZE))
        raise ValueError(
            f"corrupt shard {path}: token id {int(tokens[where])} at position {where:,} is "
            f"outside the vocabulary of {VOCAB_SIZE:,}; prepare the data again"
        )
    _IDS_CHECKED.add(key)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """Load `manifest.json` and check it describes complete GPT-2 token shards."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a prepared data directory (run `gpt124m prepare`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt manifest {path}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a gpt124m token manifest")
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {manifest.get('format_version')}; this gpt124m reads "
            f"version {MANIFEST_FORMAT_VERSION}"
        )
    if not manifest.get("complete"):
        raise ValueError(f"{data_dir} holds an unfinished preparation; rerun `gpt124m prepare`")
    tokenizer, vocab = manifest.get("tokenizer"), manifest.get("vocab_size")
    if tokenizer != TOKENIZER or vocab != VOCAB_SIZE:
        raise ValueError(
            f"{data_dir} was prepared with tokenizer {tokenizer!r} (vocabulary {vocab}); "
            f"gpt124m models need {TOKENIZER!r} (vocabulary {VOCAB_SIZE})"
        )
    check_fields(manifest, path)
    return manifest


def _plain_name(name: str) -> bool:
    """A file directly inside the directory: no separator of any platform, not `.` or `..`."""
    return (
        name not in ("", ".", "..")
        and PurePosixPath(name).name == PureWindowsPath(name).name == name
    )


def check_fields(manifest: dict, path: Path) -> None:
    """The types of the fields readers use, so that a hand-edited or foreign manifest is refused
    naming the field, not as a TypeError in the loader, nor followed to a shard outside the
    directory (`prepare` even deletes the shards it lists when settings turn out impossible)."""

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"corrupt manifest {path}: {field} {why}")

    if manifest.get("dtype", "uint16") != "uint16":  # written by `prepare`; absent in old ones
        raise bad("dtype", f"is {manifest['dtype']!r}; shards hold uint16 tokens")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise bad("shards", f"must be a list of shard entries, got {type(shards).__name__}")
    names = set()
    for i, entry in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(entry, dict):
            raise bad(where, f"must be an object, got {type(entry).__name__}")
        name, tokens = entry.get("name"), entry.get("tokens")
        if not isinstance(name, str) or not _plain_name(name):
            raise bad(f"{where}.name", f"{name!r} is not a file name inside the data directory")
        if name in names:
            raise bad(f"{where}.name", f"{name!r} is listed twice")
        names.add(name)
        if entry.get("split") not in ("train", "val"):
            raise bad(f"{where}.split", f"must be 'train' or 'val', got {entry.get('split')!r}")
        if type(tokens) is not int or tokens < 0:
            raise bad(f"{where}.tokens", f"must be a count of tokens, got {tokens!r}")
        if not isinstance(entry.get("sha256"), str):
            raise bad(f"{where}.sha256", f"must be a hex digest, got {entry.get('sha256')!r}")


def open_split(data_dir: str | os.PathLike, split: str) -> tuple[dict, list[np.ndarray]]:
    """Manifest plus memory-mapped shards of one split, each checked against the manifest and
    for ids outside the vocabulary."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    arrays = []
    for entry in manifest["shards"]:
        if entry["split"] != split:
            continue
        path = data_dir / entry["name"]
        header = read_header(path)
        if header["vocab_size"] != VOCAB_SIZE or header["eot_id"] != EOT_ID:
            raise ValueError(
                f"shard {path} was written for a vocabulary of {header['vocab_size']} "
                f"(eot {header['eot_id']}); expected {VOCAB_SIZE} (eot {EOT_ID})"
            )
        if header["tokens"] != entry["tokens"]:
            raise ValueError(
                f"corrupt shard {path}: it holds {header['tokens']:,} tokens, "
                f"the manifest says {entry['tokens']:,}"
            )
        tokens = load_shard(path)
        check_ids(path, tokens)
        arrays.append(tokens)
    if not arrays:
        raise ValueError(f"{data_dir} has no {split} shards")
    return manifest, arrays
