import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt124m.data import builtin
from gpt124m.data import shards as fmt
from gpt124m.data.loader import TokenLoader, load_shard, validation_batches
from gpt124m.data.prepare import PrepareConfig, prepare
from gpt124m.data.sources import decode_utf8, open_hf
from gpt124m.tokenizer import get_tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 9,
    "Ünïcödé text — with «quotes» and 数字 123.",
    "Short.",
    "A longer document about tokenizers, shards and loaders. " * 30,
    "Ends with a newline\n",
    "<|endoftext|> appears here as plain text, not as the special token.",
] * 3


def expected_tokens(docs):
    tok = get_tokenizer()
    return np.array([t for d in docs for t in [tok.eot_id, *tok.encode(d)]], dtype=np.uint16)


def all_tokens(out, manifest):
    return np.concatenate([load_shard(out / s["name"]) for s in manifest["shards"]])


def cfg(source, out, **kw):
    kw.setdefault("shard_tokens", 300)
    kw.setdefault("val_tokens", 100)
    return PrepareConfig(source=str(source), out_dir=str(out), workers=2, progress=False, **kw)


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def write_parquet(path, docs, field="text"):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path, row_group_size=4)
    return path


def check(out, manifest, docs):
    want = expected_tokens(docs)
    got = all_tokens(out, manifest)
    assert (
        manifest["tokens"]
        == len(want)
        == len(docs) + sum(len(get_tokenizer().encode(d)) for d in docs)
    )
    assert np.array_equal(got, want)
    assert manifest["documents"] == len(docs)
    names = [s["name"] for s in manifest["shards"]]
    assert names[0] == "val_000000.bin" and "train_000000.bin" in names
    for s in manifest["shards"]:
        assert fmt.sha256_file(out / s["name"]) == s["sha256"]
    assert manifest["splits"]["val"]["tokens"] == 100
    assert all(s["tokens"] <= 300 for s in manifest["shards"])
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_prepare_txt_files(tmp_path):
    src = tmp_path / "txt"
    src.mkdir()
    for i, d in enumerate(DOCS):
        (src / f"doc{i:02d}.txt").write_text(d)
    manifest = prepare(cfg(src, tmp_path / "out"))
    check(tmp_path / "out", manifest, DOCS)
    assert manifest["settings"]["source"]["kind"] == "local"


@pytest.mark.parametrize("block", [7, 1 << 24])
def test_prepare_txt_split_lines(tmp_path, monkeypatch, block):
    monkeypatch.setattr("gpt124m.data.sources._READ_BLOCK", block)
    src = tmp_path / "corpus.txt"
    src.write_text("\n\n".join(DOCS) + "\n \n\n\r\n")
    manifest = prepare(cfg(src, tmp_path / "out", split_lines=True))
    paragraphs = [d.strip() for d in DOCS]
    check(tmp_path / "out", manifest, paragraphs)


def test_prepare_jsonl_and_glob(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS[:7])
    write_jsonl(tmp_path / "b.jsonl", DOCS[7:])
    manifest = prepare(cfg(tmp_path / "*.jsonl", tmp_path / "out"))
    check(tmp_path / "out", manifest, DOCS)


def test_prepare_json_array_with_text_field(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"body": d} for d in DOCS]))
    manifest = prepare(cfg(tmp_path / "a.json", tmp_path / "out", text_field="body"))
    check(tmp_path / "out", manifest, DOCS)


def test_prepare_parquet(tmp_path):
    write_parquet(tmp_path / "a.parquet", DOCS)
    manifest = prepare(cfg(tmp_path / "a.parquet", tmp_path / "out"))
    check(tmp_path / "out", manifest, DOCS)


def test_hub_streaming_path_on_a_local_dataset(tmp_path):
    pytest.importorskip("datasets")
    ds_dir = tmp_path / "hubds"
    ds_dir.mkdir()
    write_parquet(ds_dir / "train.parquet", DOCS)
    source = open_hf(str(ds_dir), hf_config=None, split="train", text_field="text")
    assert source.describe["kind"] == "huggingface"
    assert [t for t, _ in source.documents()] == DOCS
    with pytest.raises(ValueError, match="no text field 'body'"):
        open_hf(str(ds_dir), hf_config=None, split="train", text_field="body")


def test_unknown_hub_dataset_fails_clearly_offline(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ValueError, match="cannot open Hugging Face dataset 'no-such-owner/no-such"):
        prepare(cfg("no-such-owner/no-such-dataset", tmp_path / "out", hf_config="nope"))


def test_worker_count_does_not_change_output(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    one = cfg(tmp_path / "a.jsonl", tmp_path / "one")
    one.workers = 1
    four = cfg(tmp_path / "a.jsonl", tmp_path / "four")
    four.workers = 4
    a, b = prepare(one), prepare(four)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_interrupt_and_rerun_is_identical(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    src = tmp_path / "a.jsonl"
    reference = prepare(cfg(src, tmp_path / "ref", shard_tokens=97, val_tokens=150))

    real_write = fmt.write_shard
    written = []
    fail_after = [4]

    def recording_write(path, tokens):
        if len(written) == fail_after[0]:
            raise KeyboardInterrupt
        written.append(Path(path).name)
        return real_write(path, tokens)

    monkeypatch.setattr(fmt, "write_shard", recording_write)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg(src, out, shard_tokens=97, val_tokens=150))
    partial = json.loads((out / "manifest.json").read_text())
    assert partial["complete"] is False and len(partial["shards"]) == 4
    assert any(s["end"]["offset"] > 0 for s in partial["shards"]), "want a mid-document resume"
    assert not list(out.glob(".*.tmp"))

    written.clear()
    fail_after[0] = -1
    manifest = prepare(cfg(src, out, shard_tokens=97, val_tokens=150))
    assert written and set(written).isdisjoint(s["name"] for s in partial["shards"])
    assert manifest == reference
    for s in reference["shards"]:
        assert (out / s["name"]).read_bytes() == (tmp_path / "ref" / s["name"]).read_bytes()

    written.clear()
    assert prepare(cfg(src, out, shard_tokens=97, val_tokens=150)) == reference
    assert written == []


def test_rerun_with_other_settings_is_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    prepare(cfg(tmp_path / "a.jsonl", tmp_path / "out"))
    with pytest.raises(ValueError, match="other settings"):
        prepare(cfg(tmp_path / "a.jsonl", tmp_path / "out", shard_tokens=500))


def test_max_tokens_caps_the_total(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    manifest = prepare(cfg(tmp_path / "a.jsonl", tmp_path / "out", max_tokens=555))
    assert manifest["tokens"] == 555 and manifest["truncated_by_max_tokens"]
    assert np.array_equal(all_tokens(tmp_path / "out", manifest), expected_tokens(DOCS)[:555])
    # a cap the source ends exactly at cuts nothing; one a document short of it does
    total = len(expected_tokens(DOCS))
    exact = prepare(cfg(tmp_path / "a.jsonl", tmp_path / "exact", max_tokens=total))
    assert exact["tokens"] == total and not exact["truncated_by_max_tokens"]
    short = total - len(expected_tokens(DOCS[-1:]))
    one_short = prepare(cfg(tmp_path / "a.jsonl", tmp_path / "short", max_tokens=short))
    assert one_short["documents"] == len(DOCS) - 1 and one_short["truncated_by_max_tokens"]


def test_a_recursive_glob_reads_each_file_once(tmp_path):
    """`data/**` names the folders as well as the files in them; a duplicate file would also
    put the validation tokens into training."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    write_jsonl(tmp_path / "data" / "a.jsonl", DOCS[:7])
    write_jsonl(tmp_path / "data" / "sub" / "b.jsonl", DOCS[7:])
    for pattern in ("data/**", "data/**/*", "**/*.jsonl"):
        out = tmp_path / f"out-{len(pattern)}"
        manifest = prepare(cfg(tmp_path / pattern, out))
        check(out, manifest, DOCS)


def test_an_existing_file_is_itself_even_with_glob_characters(tmp_path):
    write_jsonl(tmp_path / "part[1].jsonl", DOCS)
    write_jsonl(tmp_path / "part1.jsonl", ["the wrong file"])
    manifest = prepare(cfg(tmp_path / "part[1].jsonl", tmp_path / "out"))
    check(tmp_path / "out", manifest, DOCS)


def _dataset_folder(root, configs):
    """A local copy of a hub dataset repo: files per config, and a card that declares them."""
    card = ["---", "configs:"]
    for name, docs in configs.items():
        (root / name).mkdir(parents=True)
        write_parquet(root / name / "0.parquet", docs)
        card += [
            f"- config_name: {name}",
            "  data_files:",
            "  - split: train",
            f"    path: {name}/*",
        ]
    (root / "README.md").write_text("\n".join([*card, "---", "# A dataset", ""]))
    return root


def test_a_local_hub_dataset_folder_is_read_as_the_hub_reads_it(tmp_path, monkeypatch):
    """Like FineWeb-Edu's repo: `sample-10BT` is a subset of the whole, so reading every file
    in the tree would read its documents twice."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    repo = _dataset_folder(
        tmp_path / "fineweb-edu", {"default": DOCS + ["more"] * 40, "sample-10BT": DOCS}
    )
    manifest = prepare(cfg(repo, tmp_path / "out", hf_config="sample-10BT"))
    check(tmp_path / "out", manifest, DOCS)
    assert manifest["settings"]["source"]["config"] == "sample-10BT"
    with pytest.raises(
        ValueError, match="configs default, sample-10BT; choose one with --hf-config"
    ):
        prepare(cfg(repo, tmp_path / "out2", hf_config="sample-100BT"))
    single = _dataset_folder(tmp_path / "mine", {"default": DOCS})
    check(tmp_path / "out3", prepare(cfg(single, tmp_path / "out3", hf_config="sample-10BT")), DOCS)


def test_a_local_hub_dataset_without_configs_reads_only_the_split_asked(tmp_path, monkeypatch):
    """A card with no `configs:` leaves the splits to the files' names, as on the hub: `--split
    train` must not read `data/test-*` into the validation shard (it sorts first)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    repo = tmp_path / "ds"
    (repo / "data").mkdir(parents=True)
    test_docs = [f"Held out: {d}" for d in reversed(DOCS)]
    write_parquet(repo / "data" / "train-00000-of-00001.parquet", DOCS)
    write_parquet(repo / "data" / "test-00000-of-00001.parquet", test_docs)
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# A dataset\n")
    for split, docs in (("train", DOCS), ("test", test_docs)):
        hub = [r["text"] for r in datasets.load_dataset(str(repo), split=split, streaming=True)]
        assert hub == docs  # the reference: how `datasets` reads the folder
        out = tmp_path / f"out-{split}"
        check(out, prepare(cfg(repo, out, split=split)), docs)
    # the split word after a separator names it too, as in datasets' own patterns
    for name in ("train", "test"):
        (repo / "data" / f"{name}-00000-of-00001.parquet").rename(repo / f"wiki-{name}.parquet")
    hub = [r["text"] for r in datasets.load_dataset(str(repo), split="test", streaming=True)]
    assert hub == test_docs
    check(tmp_path / "wiki", prepare(cfg(repo, tmp_path / "wiki", split="test")), test_docs)


def test_a_folder_with_a_card_but_no_hub_splits_is_read_file_by_file(tmp_path):
    """A front-matter README alone does not make a folder a hub dataset: its text files are
    documents, whole, as before (`datasets` would read them line by line, as split 'train')."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "README.md").write_text("---\nlicense: mit\n---\n# My notes\n")
    (tmp_path / "corpus" / "essay.txt").write_text(DOCS[0])
    (tmp_path / "corpus" / "unit-test-notes.txt").write_text(DOCS[3])  # no split: not a name
    manifest = prepare(cfg(tmp_path / "corpus", tmp_path / "out"))
    assert manifest["settings"]["source"]["kind"] == "local"
    check(tmp_path / "out", manifest, [DOCS[0], DOCS[3]])


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes("good \ufffd kept ".encode() + b"bad \xff\xfe and \xc3 end")
    (tmp_path / "b.txt").write_bytes(b"clean text")
    manifest = prepare(cfg(tmp_path / "*.txt", tmp_path / "out", val_tokens=2, shard_tokens=10))
    assert manifest["repaired"] == {
        "invalid_utf8_sequences_replaced": 3,
        "documents_with_replacements": 1,
    }
    assert decode_utf8(b"x\xffy")[1] == 1


def test_empty_documents_are_skipped_and_counted(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["", *DOCS, "   "])
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": None}) + "\n")
    manifest = prepare(cfg(tmp_path / "a.jsonl", tmp_path / "out"))
    assert manifest["skipped"] == {"empty_documents": 3}
    check(tmp_path / "out", manifest, DOCS)


@pytest.mark.parametrize(
    "setup, kwargs, error, message",
    [
        ("empty_dir", {}, ValueError, "empty source"),
        ("empty_docs", {}, ValueError, "empty source"),
        ("no_match", {}, FileNotFoundError, "no files match"),
        ("missing", {}, FileNotFoundError, "source not found"),
        ("jsonl", {"text_field": "body"}, ValueError, "missing text field 'body'"),
        ("parquet", {"text_field": "body"}, ValueError, "missing text field 'body'"),
        ("bad_json", {}, ValueError, "not valid JSON"),
        ("unsupported", {}, ValueError, "unsupported file type"),
        ("jsonl", {"val_tokens": 10**6}, ValueError, "nothing is left to train on"),
        ("jsonl", {"shard_tokens": 0}, ValueError, "shard_tokens must be between 1 and"),
        # a shard fills in memory: 10**14 tried to allocate 182 TiB (a MemoryError traceback)
        ("jsonl", {"shard_tokens": 10**14}, ValueError, "shard_tokens must be between 1 and"),
        ("jsonl", {"out": "file/sub"}, ValueError, "not writable"),
    ],
)
def test_bad_input_errors(tmp_path, setup, kwargs, error, message):
    src = tmp_path / "src"
    src.mkdir()
    source = src
    if setup == "empty_docs":
        write_jsonl(src / "a.jsonl", ["", "  \n"])
    elif setup == "no_match":
        source = src / "*.txt"
    elif setup == "missing":
        source = tmp_path / "nothing-here.txt"
    elif setup == "jsonl":
        write_jsonl(src / "a.jsonl", DOCS)
    elif setup == "parquet":
        write_parquet(src / "a.parquet", DOCS)
    elif setup == "bad_json":
        (src / "a.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    elif setup == "unsupported":
        source = src / "a.csv"
        source.write_text("text\nhello\n")
    out = tmp_path / "out"
    if kwargs.pop("out", None):
        (tmp_path / "file").write_text("a file, not a directory")
        out = tmp_path / "file" / "sub"
    with pytest.raises(error, match=message):
        prepare(cfg(source, out, **kwargs))


def test_builtin_corpus_feeds_the_loader(tmp_path):
    out = tmp_path / "builtin"
    manifest = prepare(
        PrepareConfig(
            source="builtin",
            out_dir=str(out),
            shard_tokens=200_000,
            val_tokens=20_000,
            max_tokens=300_000,
            progress=False,
        )
    )
    assert manifest["settings"]["source"]["kind"] == "builtin"
    assert manifest["tokens"] == 300_000 and manifest["documents"] > 50
    assert manifest["splits"]["val"]["tokens"] == 20_000
    # the shards hold the corpus's documents in order, each after an EOT, cut at max_tokens
    tok = get_tokenizer()
    expected: list[int] = []
    for doc in builtin.documents():
        expected += [tok.eot_id, *tok.encode(doc)]
        if len(expected) >= 300_000:
            break
    assert all_tokens(out, manifest).tolist() == expected[:300_000]
    x, y = TokenLoader(out, batch_size=2, seq_len=64).next_batch()
    assert x.shape == y.shape == (2, 64) and (x[:, 1:] == y[:, :-1]).all()
    assert len(list(validation_batches(out, batch_size=2, seq_len=64, max_tokens=1280))) == 10


def test_cli_prepare(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "gpt124m",
        "prepare",
        "--source",
        str(tmp_path / "a.jsonl"),
        "--out",
        str(out),
        "--shard-tokens",
        "300",
        "--val-tokens",
        "100",
        "--workers",
        "2",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tokens"] == len(expected_tokens(DOCS))
    assert "tok/s" in result.stderr and "docs/s" in result.stderr
    bad = subprocess.run(
        [*cmd[:5], str(tmp_path / "none.txt"), *cmd[6:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "gpt124m prepare: error: source not found" in bad.stderr


def run_cli(*args, timeout=120):
    cmd = [sys.executable, "-m", "gpt124m", "prepare", "--workers", "2", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_default_validation_split_fits_a_source_smaller_than_one_shard(tmp_path):
    """The default (one shard of 100M tokens) on a small source: a tenth goes to validation."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    want = expected_tokens(DOCS)
    result = run_cli("--source", tmp_path / "a.jsonl", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["val"]["tokens"] == len(want) // 10
    assert manifest["splits"]["train"]["tokens"] == len(want) - len(want) // 10
    assert np.array_equal(all_tokens(tmp_path / "out", manifest), want)
    assert "go to validation" in result.stderr


@pytest.mark.parametrize("extra", [0, 1])
def test_default_split_at_the_shard_boundary(tmp_path, extra):
    """A source of exactly one shard is still split; one token more gives a whole val shard."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    n = len(expected_tokens(DOCS))
    config = cfg(tmp_path / "a.jsonl", tmp_path / "out", val_tokens=None, shard_tokens=n - extra)
    manifest = prepare(config)
    if extra:
        assert manifest["splits"]["val"] == {"tokens": n - 1, "shards": 1}
        assert manifest["splits"]["train"] == {"tokens": 1, "shards": 1}
    else:
        assert manifest["splits"]["val"]["tokens"] == n // 10
        assert manifest["splits"]["train"]["tokens"] == n - n // 10


def test_default_split_under_max_tokens(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    manifest = prepare(cfg(tmp_path / "a.jsonl", tmp_path / "out", val_tokens=None, max_tokens=500))
    assert manifest["splits"]["val"]["tokens"] == 50
    assert manifest["splits"]["train"]["tokens"] == 450


def test_default_split_resumes_from_the_val_shard(tmp_path):
    """The val shard of a split records where the stream stood at its end: a damaged train shard
    is redone from there, byte for byte."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    src, out = tmp_path / "a.jsonl", tmp_path / "out"
    reference = prepare(cfg(src, out, val_tokens=None, shard_tokens=10_000))
    train = out / reference["shards"][1]["name"]
    before = train.read_bytes()
    train.write_bytes(before[:100])
    assert prepare(cfg(src, out, val_tokens=None, shard_tokens=10_000)) == reference
    assert train.read_bytes() == before
    end = reference["shards"][0]["end"]
    tok = get_tokenizer()
    covered = sum(1 + len(tok.encode(d)) for d in DOCS[: end["document"]]) + end["offset"]
    assert covered == reference["shards"][0]["tokens"]


def test_failed_runs_leave_nothing_that_blocks_a_retry(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    out = tmp_path / "data" / "small"
    # val shards are written before the source runs out: they are removed with the manifest
    bad = run_cli("--source", tmp_path / "a.jsonl", "--out", out, "--shard-tokens", 200,
                  "--val-tokens", 10**6)  # fmt: skip
    assert bad.returncode == 2 and "nothing is left to train on" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "data").exists(), "the run created data/small and must remove both"
    good = run_cli("--source", tmp_path / "a.jsonl", "--out", out, "--val-tokens", 30)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["splits"]["val"]["tokens"] == 30

    (tmp_path / "empty.txt").write_text("")
    empty = run_cli("--source", tmp_path / "empty.txt", "--out", tmp_path / "from-empty")
    assert empty.returncode == 2 and "empty source" in empty.stderr
    assert not (tmp_path / "from-empty").exists()


def test_a_directory_the_user_made_is_kept(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="empty source"):
        prepare(cfg(tmp_path / "empty.txt", tmp_path / "mine"))
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_a_manifest_of_the_old_default_is_still_recognised(tmp_path):
    """Earlier versions recorded the default validation size as the shard size."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    out = tmp_path / "out"
    first = prepare(cfg(tmp_path / "a.jsonl", out, val_tokens=None, shard_tokens=100))
    assert first["settings"]["val_tokens"] == "auto"
    old = {**first, "settings": {**first["settings"], "val_tokens": 100}}
    (out / "manifest.json").write_text(json.dumps(old))
    assert prepare(cfg(tmp_path / "a.jsonl", out, val_tokens=None, shard_tokens=100)) == old


@pytest.mark.parametrize("name", ["../victim.bin", "shards"])
def test_a_rerun_never_follows_a_manifest_out_of_its_directory(tmp_path, name):
    """The manifest a rerun resumes from is checked like any other: a shard listed as
    `../victim.bin` was read, and deleted with the run's shards when its settings failed."""
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    out = tmp_path / "out"
    manifest = prepare(cfg(tmp_path / "a.jsonl", out))
    victim = tmp_path / "victim.bin"
    (out / "val_000000.bin").rename(victim)
    entry = {**manifest["shards"][0], "name": "../victim.bin"}
    settings = {**manifest["settings"], "val_tokens": 10**6}  # no tokens left to train on
    edited = {**manifest, "complete": False, "settings": settings, "shards": [entry]}
    if name == "shards":
        edited["shards"] = "val_000000.bin"  # was a TypeError traceback
    (out / "manifest.json").write_text(json.dumps(edited))
    before = victim.read_bytes()
    field = "shards[0].name '../victim.bin' is not a file name" if name != "shards" else "shards"
    with pytest.raises(
        ValueError, match=re.escape(f"corrupt manifest {out / 'manifest.json'}: {field}")
    ):
        prepare(cfg(tmp_path / "a.jsonl", out, val_tokens=10**6))
    assert victim.read_bytes() == before


def test_absurdly_small_shards_are_refused_at_once(tmp_path):
    """`--shard-tokens 1` on the bundled corpus wrote a file per token (755,000 of them; the
    manifest is rewritten after each, so hours). Shards under 1,024 tokens are for sources of at
    most 100 of them: refused before any work where --max-tokens says so, else at the 101st
    shard, and the run leaves nothing behind."""
    with pytest.raises(
        ValueError, match="shard_tokens 1 is below 1,024.* --max-tokens 1,000 needs"
    ):
        prepare(cfg("builtin", tmp_path / "capped", shard_tokens=1, max_tokens=1000))
    # the splits are sharded apart: 1 + 100 shards of 500 here, refused up front too
    with pytest.raises(ValueError, match="--max-tokens 50,000 needs 101"):
        prepare(cfg("builtin", tmp_path / "capped", shard_tokens=500, max_tokens=50_000,
                    val_tokens=250))  # fmt: skip
    out = tmp_path / "data" / "builtin"
    started = time.perf_counter()
    with pytest.raises(ValueError, match="shard_tokens 1 is below 1,024, which only a source of at "
                       "most 100 shards may use, and this source needs more"):  # fmt: skip
        prepare(cfg("builtin", out, shard_tokens=1, val_tokens=None))
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "data").exists() and not (tmp_path / "capped").exists()
    # small shards of a small source are fine, as every other test here shows; so are 1,024
    manifest = prepare(cfg("builtin", out, shard_tokens=1024, max_tokens=4000, val_tokens=1000))
    assert [s["tokens"] for s in manifest["shards"]] == [1000, 1024, 1024, 952]
