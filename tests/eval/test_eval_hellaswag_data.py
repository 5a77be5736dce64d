import json
import logging
import sys

import pytest

from gpt124m.eval import hellaswag as hs
from gpt124m.eval import hellaswag_data as hsd
from gpt124m.tokenizer import get_tokenizer

# -- the harness's preprocessing, on hand-written examples -------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        # strip, then " [title]" -> ". ", then brackets go, then one pass of "  " -> " "
        (
            "[header] How to dye your hair [title] Buy dye. [step] Pick a colour.",
            " How to dye your hair. Buy dye. Pick a colour.",
        ),
        ("  A man sits down.  ", "A man sits down."),
        ("He waves [substeps] and  leaves.", "He waves and leaves."),
        # a single pass: four spaces become two, not one
        ("a    b", "a  b"),
        # [title] at the very start has no leading space, so it is simply removed
        ("[title] Clean the sink.", " Clean the sink."),
        ("No artefacts here.", "No artefacts here."),
    ],
)
def test_preprocess_matches_the_harness(raw, expected):
    assert hsd.preprocess(raw) == expected


def test_harness_query_capitalises_ctx_b_and_prefixes_the_activity():
    item = hsd.parse_item(
        {
            "activity_label": "Making a cake",
            "ctx_a": "A woman mixes flour [title] in a bowl.",
            "ctx_b": "then SHE adds eggs",
            "ctx": "unused",
            "endings": ["a", "b"],
            "label": 0,
        },
        "x: line 1",
    )
    # str.capitalize lowercases the rest, as Python (and so the harness) does
    assert (
        hsd.harness_query(item)
        == "Making a cake: A woman mixes flour. in a bowl. Then she adds eggs"
    )


def test_rows_follow_each_convention(rows):
    tok = get_tokenizer()
    item = hsd.parse_item(rows[0], "f: line 1")
    (comp,) = hs.encode_items([item], "completion", block_size=1024)
    (harn,) = hs.encode_items([item], "harness", block_size=1024)
    for j, ending in enumerate(item.endings):
        cont = tok.encode(" " + ending)
        assert comp.rows[j] == tuple(tok.encode(item.ctx) + cont)
        assert comp.n_scored[j] == len(cont)
        clean = hsd.preprocess(ending)
        query = hsd.harness_query(item)
        whole = tok.encode(query + " " + clean)
        assert harn.rows[j] == tuple(whole)
        assert harn.n_scored[j] == len(whole) - len(tok.encode(query))
        assert harn.norm_chars[j] == len(clean)
    assert comp.label == harn.label == 0


def harness_encode_pair(context, continuation):
    """lm-evaluation-harness's split: the context's trailing whitespace goes with the
    continuation; the whole string is encoded once and cut after the context's tokens."""
    tok = get_tokenizer()
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation)
    return whole, len(whole) - len(tok.encode(context))


def test_a_query_ending_in_a_space_scores_the_space_with_the_ending():
    """`preprocess` strips first, then drops brackets: "... sink. [step]" ends in a space."""
    row = {
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to clean a sink [title] Rinse the sink. [step]",
        "ctx_b": "",
        "ctx": "unused",
        "endings": ["Use warm water.", "[substeps] Dry it."],
        "label": 0,
    }
    item = hsd.parse_item(row, "f: line 1")
    query = hsd.harness_query(item)
    assert query.endswith(". ")
    (harn,) = hs.encode_items([item], "harness", block_size=1024)
    for j, ending in enumerate(item.endings):
        whole, n_scored = harness_encode_pair(query, " " + hsd.preprocess(ending))
        assert harn.rows[j] == tuple(whole) and harn.n_scored[j] == n_scored


def test_long_rows_keep_the_ending_and_lose_the_start_of_the_context(rows):
    item = hsd.parse_item({**rows[0], "ctx": "word " * 200}, "f: line 1")
    (enc,) = hs.encode_items([item], "completion", block_size=64)
    tok = get_tokenizer()
    for j, row in enumerate(enc.rows):
        assert len(row) == 65  # block_size inputs + the last target
        assert row[-enc.n_scored[j] :] == tuple(tok.encode(" " + item.endings[j]))
    too_long = hsd.parse_item({**rows[0], "endings": ["x " * 80, "y"]}, "f: line 7")
    with pytest.raises(ValueError, match="f: line 7.*exceeds the model's block size 64"):
        hs.encode_items([too_long], "completion", block_size=64)


# -- reading files -----------------------------------------------------------------------------


def test_jsonl_and_parquet_give_the_same_items(tmp_path, rows, jsonl_file, make_parquet):
    parquet = make_parquet(tmp_path / "val.parquet", rows)
    a, b = hs.load_items(jsonl_file), hs.load_items(parquet)
    assert [(i.ind, i.ctx, i.endings, i.label) for i in a] == [
        (i.ind, i.ctx, i.endings, i.label) for i in b
    ]
    assert len(a) == len(rows)
    assert a[3].label == 3 and a[3].ind == 103 and a[3].endings == tuple(rows[3]["endings"])


def test_limit_takes_the_first_items(jsonl_file):
    items = hs.load_items(jsonl_file, limit=5)
    assert [i.ind for i in items] == [100, 101, 102, 103, 104]
    with pytest.raises(ValueError, match="limit must be >= 1"):
        hs.load_items(jsonl_file, limit=0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: "{not json", r"line 3: not valid JSON"),
        (lambda r: json.dumps([1, 2]), r"line 3: expected a JSON object"),
        (
            lambda r: json.dumps({k: v for k, v in r.items() if k != "ctx_b"}),
            r"line 3: missing field\(s\) ctx_b",
        ),
        (lambda r: json.dumps({**r, "endings": "one ending"}), r"line 3: endings must be a list"),
        (lambda r: json.dumps({**r, "label": 4}), r"line 3: label 4 is out of range for 4 endings"),
        (lambda r: json.dumps({**r, "label": ""}), r"line 3: label must be an integer.*test split"),
        (lambda r: json.dumps({**r, "ctx": None}), r"line 3: ctx must be a string"),
    ],
)
def test_malformed_items_name_the_line(tmp_path, rows, mutate, message):
    lines = [json.dumps(r) for r in rows]
    lines[2] = mutate(rows[2])
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl: {message}"):
        hs.load_items(path)


def test_malformed_parquet_row_names_the_row(tmp_path, rows, make_parquet):
    rows[4]["label"] = "7"
    path = make_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match="bad.parquet: row 5: label 7 is out of range"):
        hs.load_items(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        hs.load_items(tmp_path / "nope.jsonl")
    (tmp_path / "val.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected a .jsonl or .parquet file"):
        hs.load_items(tmp_path / "val.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="junk.parquet: not a readable parquet file"):
        hs.load_items(tmp_path / "junk.parquet")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no HellaSwag items"):
        hs.load_items(tmp_path / "empty.jsonl")


# -- the hub path, served from local files -----------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, rows, make_parquet):
    """Stand-ins for huggingface_hub: a cache that may hold the file, and a repo listing."""
    import huggingface_hub

    hub = {"cached": False, "online": True, "calls": []}
    served = make_parquet(tmp_path / "served.parquet", rows)

    def hf_hub_download(repo_id, filename, *, repo_type, revision, cache_dir, local_files_only):
        hub["calls"].append((repo_id, filename, repo_type, revision, local_files_only))
        if local_files_only and not hub["cached"]:
            raise FileNotFoundError("not in cache")
        if not local_files_only and not hub["online"]:
            raise ConnectionError("offline")
        hub["cached"] = True
        return str(served)

    def list_repo_files(repo_id, *, repo_type, revision):
        if not hub["online"]:
            raise ConnectionError("offline")
        if revision == "main":
            return ["README.md", "hellaswag.py"]  # a script-only repo, as it once was
        return ["default/train/0000.parquet", "default/validation/0000.parquet"]

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    # the offline check sees this hub's state, not the machine's (or CI's HF_HUB_OFFLINE)
    monkeypatch.setattr(hsd, "hub_unreachable", lambda: None if hub["online"] else "offline")
    return hub


def test_hub_download_finds_the_validation_parquet_then_uses_the_cache(fake_hub, rows):
    items = hs.load_items(limit=3)
    assert [i.ind for i in items] == [100, 101, 102]
    downloads = [c for c in fake_hub["calls"] if not c[4]]
    assert downloads == [
        (
            "Rowan/hellaswag",
            "default/validation/0000.parquet",
            "dataset",
            "refs/convert/parquet",
            False,
        )
    ]
    fake_hub["online"] = False
    fake_hub["calls"].clear()
    assert len(hs.load_items()) == len(rows)  # offline, from the cache
    assert all(c[4] for c in fake_hub["calls"])


def test_unavailable_data_raises_a_clear_error(fake_hub):
    fake_hub["online"] = False
    with pytest.raises(hs.HellaSwagUnavailable, match="Rowan/hellaswag") as err:
        hs.load_items()
    assert "--" not in str(err.value)  # each command names its own flag


def test_hook_warns_once_and_carries_on_when_data_is_unavailable(fake_hub, model, caplog):
    fake_hub["online"] = False
    hook = hs.HellaSwagHook(limit=4)
    with caplog.at_level(logging.WARNING, logger="gpt124m.eval.hellaswag"):
        assert hook(model, device="cpu") is None
        assert hook(model, device="cpu") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HellaSwag" in warnings[0].getMessage()
    assert "--hellaswag-data FILE" in warnings[0].getMessage()  # train's flag, not eval's
    # a local file that is not there is a mistake to fix, not the hub being out of reach
    missing = hs.HellaSwagHook("/no/such/hellaswag.jsonl")
    with pytest.raises(FileNotFoundError, match="no such HellaSwag file"):
        missing.prepare()


def test_hook_runs_the_completion_convention_on_cached_tokens(jsonl_file, model, monkeypatch):
    hook = hs.HellaSwagHook(jsonl_file, limit=6, batch_size=4)
    first = hook(model, device="cpu")
    expected = hs.evaluate(model, hs.load_items(jsonl_file, limit=6), progress=False)
    assert first == expected.metrics["completion"]
    assert first["n"] == 6
    # the second call reuses the tokenized items: no reading, no tokenizing
    monkeypatch.setattr(hs, "load_items", lambda *a, **k: pytest.fail("reloaded"))
    monkeypatch.setattr(hs, "encode_items", lambda *a, **k: pytest.fail("re-tokenized"))
    assert hook(model, device="cpu") == first


def test_parquet_without_pyarrow_is_unavailable_not_a_crash(
    tmp_path, rows, make_parquet, model, monkeypatch
):
    path = make_parquet(tmp_path / "val.parquet", rows)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now fails
    with pytest.raises(hs.HellaSwagUnavailable, match="needs pyarrow"):
        hs.load_items(path)
    assert hs.HellaSwagHook(path)(model, device="cpu") is None
