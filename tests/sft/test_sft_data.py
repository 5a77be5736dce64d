import json
import logging

import pytest
import torch

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.sft import data as sft_data
from gpt124m.sft import examples as sft_examples
from gpt124m.sft.data import Example, SFTBatches, encode_examples, make_batch
from gpt124m.sft.template import format_prompt
from gpt124m.tokenizer import EOT_ID, get_tokenizer

EXAMPLES = [
    Example("Name a colour.", "", "Blue."),
    Example("Add the numbers.", "2 and 3", "  5  "),
    Example("Say nothing but <|endoftext|> literally.", "", "<|endoftext|>"),
]


def test_prompt_and_response_tokenized_separately_with_exact_boundary():
    tok = get_tokenizer()
    for template in ("seed", "alpaca"):
        for e, enc in zip(EXAMPLES, encode_examples(EXAMPLES, template), strict=True):
            prompt = tok.encode(format_prompt(e.instruction, e.input, template))
            response = tok.encode(e.output.strip())
            assert enc.prompt_len == len(prompt)
            assert enc.tokens.tolist() == prompt + response + [EOT_ID]
    # the literal text "<|endoftext|>" in data is text, not the special token
    literal = encode_examples(EXAMPLES[2:])[0]
    assert literal.tokens.tolist().count(EOT_ID) == 1
    seed_prompt = format_prompt("Add the numbers.", "2 and 3")
    assert seed_prompt == "### Instruction:\nAdd the numbers.\n\n2 and 3\n\n### Response:\n"
    alpaca_prompt = format_prompt("Add the numbers.", "2 and 3", "alpaca")
    assert "### Input:\n2 and 3\n\n### Response:\n" in alpaca_prompt
    assert alpaca_prompt.startswith("Below is an instruction")


def test_labels_cover_response_and_eos_only_and_padding_is_masked_by_position():
    encoded = encode_examples(EXAMPLES)
    T = max(len(e) for e in encoded) + 5
    x, y = make_batch(encoded, T)
    assert x.shape == y.shape == (3, T) and x.dtype == y.dtype == torch.int64
    for row, e in enumerate(encoded):
        tokens, p = e.tokens.tolist(), e.prompt_len
        real = len(tokens) - 1
        assert x[row, :real].tolist() == tokens[:-1]
        assert (x[row, real:] == EOT_ID).all()  # pad id is the EOS id...
        labelled = (y[row] != -100).nonzero().flatten().tolist()
        assert labelled == list(range(p - 1, real))  # ...but only the real EOS is labelled
        assert y[row, labelled].tolist() == tokens[p:]
        assert y[row, real - 1] == EOT_ID


def test_loss_counts_only_response_tokens():
    """The model's loss equals cross-entropy over response + EOS positions alone."""
    torch.manual_seed(0)
    model = GPT(get_preset("tiny")).eval()
    encoded = encode_examples(EXAMPLES)
    x, y = make_batch(encoded, 40)
    with torch.no_grad():
        logits, loss = model(x, y)
    logp = logits.float().log_softmax(-1)
    terms = []
    for row, e in enumerate(encoded):
        for pos in range(e.prompt_len - 1, len(e) - 1):
            terms.append(-logp[row, pos, e.tokens[pos + 1]])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_filter_keeps_every_example_whose_inputs_fit_the_block():
    tok = get_tokenizer()
    prompt_len = len(tok.encode(format_prompt("Repeat.")))
    # " a" is one token each, so the lengths are prompt + k + 1 (EOS)
    rows = [Example("Repeat.", "", "a" + " a" * (k - 1)) for k in range(1, 21)]
    encoded = encode_examples(rows)
    assert [len(e) for e in encoded] == [prompt_len + k + 1 for k in range(1, 21)]
    # n tokens are n - 1 inputs (the last is only a target): block + 1 tokens still fit
    block = prompt_len + 10  # keeps k <= 10, the longest of block + 1 tokens
    kept, dropped = sft_data.filter_by_length(encoded, block)
    assert dropped == 10 and len(kept) == 10 and max(len(e) for e in kept) == block + 1
    # the longest kept one trains on its whole response, EOS label at the last position
    longest = max(kept, key=len)
    x, y = make_batch([longest], block)
    assert x[0].tolist() == longest.tokens[:-1].tolist()
    assert y[0, -1].item() == EOT_ID
    assert (y[0] != -100).sum().item() == len(longest) - longest.prompt_len


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_rows_are_counted_with_line_numbers(tmp_path, caplog):
    good = json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"})
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            good,
            "{not json",
            json.dumps({"instruction": "No output."}),
            "",
            json.dumps({"instruction": "x", "input": 3, "output": "y"}),
            json.dumps({"instruction": "x", "output": "   "}),
            json.dumps(["a", "list"]),
            json.dumps({"instruction": "Fine, no input key.", "output": "ok"}),
        ],
    )
    with caplog.at_level(logging.WARNING):
        examples, report = sft_examples.load_examples(str(path))
    assert [e.output for e in examples] == ["hi", "ok"]
    assert report.rows == 7 and report.malformed == 5
    assert dict(report.problems) == {
        "invalid JSON": ["line 2"],
        "missing 'output'": ["line 3"],
        "'input' is not a string": ["line 5"],
        "empty 'output'": ["line 6"],
        "not an object": ["line 7"],
    }
    assert "5 of 7 rows malformed" in caplog.text and "line 6" in caplog.text


def test_jsonl_records_may_hold_unicode_line_separators_and_a_bom(tmp_path):
    """JSON leaves U+0085, U+2028 and U+2029 unescaped (ensure_ascii=False writers do), so
    they are data, not line breaks; a UTF-8 byte-order mark is not data either."""
    rows = [
        {"instruction": "Quote it\u2028twice.", "output": "Done\x85 ok"},
        {"instruction": "Para\u2029graph.", "input": "a\x85b", "output": "yes"},
        {"instruction": "Plain.", "output": "fine"},
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)
    want = [json.loads(line) for line in text.split("\n") if line.strip()]  # what jq reads
    for name, encoding in (("d.jsonl", "utf-8"), ("bom.jsonl", "utf-8-sig"), ("d.json", "utf-8")):
        path = tmp_path / name
        path.write_bytes(text.encode(encoding))
        examples, report = sft_examples.load_examples(str(path))
        assert report.malformed == 0 and report.rows == 3, (name, dict(report.problems))
        assert [(e.instruction, e.input, e.output) for e in examples] == [
            (w["instruction"], w.get("input", ""), w["output"]) for w in want
        ]
    path = tmp_path / "array.json"
    path.write_bytes(json.dumps(rows, ensure_ascii=False).encode("utf-8-sig"))
    assert len(sft_examples.load_examples(str(path))[0]) == 3


def test_json_array_reports_item_indexes_and_empty_results_are_errors(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    examples, report = sft_examples.load_examples(str(path))
    assert len(examples) == 1 and dict(report.problems) == {"missing 'output'": ["item 1"]}
    path.write_text(json.dumps([{"instruction": "c"}, 5]))
    with pytest.raises(ValueError, match="no usable examples .*item 0.*item 1"):
        sft_examples.load_examples(str(path))
    path.write_text("[]")
    with pytest.raises(ValueError, match="no usable examples"):
        sft_examples.load_examples(str(path))
    path.write_text('{"instruction": "a"')
    with pytest.raises(ValueError, match="not valid JSON"):
        sft_examples.load_examples(str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        sft_examples.load_examples(str(tmp_path / "missing.json"))


def test_the_hubs_parquet_copy_reads_as_its_json(tmp_path):
    """tatsu-lab/alpaca is a parquet file on the hub (with a `text` column): downloaded, it
    gives the examples the same rows give as JSON, malformed ones reported the same way."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue.", "text": "..."},
        {"instruction": "Add.", "input": "2 + 2", "output": "4", "text": "..."},
        {"instruction": "Nothing to say.", "input": "", "output": " ", "text": "..."},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "same.json").write_text(json.dumps(rows))
    got, report = sft_examples.load_examples(str(tmp_path / "train-00000-of-00001.parquet"))
    want, json_report = sft_examples.load_examples(str(tmp_path / "same.json"))
    assert got == want and len(got) == 2
    assert report.rows == 3 and list(report.problems.values()) == [["row 2"]]
    assert list(report.problems) == list(json_report.problems)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="bad.parquet: not a readable parquet file"):
        sft_examples.load_examples(str(tmp_path / "bad.parquet"))


def test_hub_source_goes_through_the_same_validation(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": "a", "input": "", "output": "b", "text": "..."}, {"instruction": "c"}]
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, report = sft_examples.load_examples("alpaca")
    assert calls == [("tatsu-lab/alpaca", "train")]
    assert len(examples) == 1 and dict(report.problems) == {"missing 'output'": ["row 1"]}

    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        ValueError, match="could not load tatsu-lab/alpaca .*local JSON, JSONL or parquet"
    ):
        sft_examples.load_examples("alpaca")


def test_split_is_seeded_disjoint_and_sized():
    encoded = encode_examples([Example(f"Task {i}.", "", f"Answer {i}.") for i in range(50)])
    train, val = sft_data.split(encoded, 0.1, seed=0)
    again_train, again_val = sft_data.split(encoded, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45
    assert [e.tokens.tobytes() for e in val] == [e.tokens.tobytes() for e in again_val]
    assert {e.tokens.tobytes() for e in train}.isdisjoint(e.tokens.tobytes() for e in val)
    _, other_val = sft_data.split(encoded, 0.1, seed=1)
    assert {e.tokens.tobytes() for e in other_val} != {e.tokens.tobytes() for e in val}


def test_pad_to_longest_and_block():
    encoded = encode_examples(EXAMPLES)
    longest = max(len(e) for e in encoded)
    assert sft_data.padded_length(encoded, 64, "longest") == longest - 1
    assert sft_data.padded_length(encoded, 64, "block") == 64


def _ids(batches, n):
    return [tuple(map(tuple, batches.next_batch()[0].tolist())) for _ in range(n)]


def test_batches_resume_exactly_across_epochs():
    encoded = encode_examples([Example(f"Task {i}.", "", f"Answer {i}.") for i in range(10)])
    a = SFTBatches(encoded, batch_size=3, seq_len=16, seed=5)
    _ids(a, 4)  # 12 examples: into the second epoch
    state = json.loads(json.dumps(a.state_dict()))
    assert state["epoch"] == 1
    expected = _ids(a, 6)
    b = SFTBatches(encoded, batch_size=3, seq_len=16, seed=5)
    b.load_state_dict(state)
    assert _ids(b, 6) == expected
    other = encode_examples([Example("Different.", "", "data.")] * 10)
    with pytest.raises(ValueError, match="different training examples"):
        SFTBatches(other, batch_size=3, seq_len=16, seed=5).load_state_dict(state)


def test_ranks_are_disjoint_and_cover_each_epoch():
    encoded = encode_examples([Example(f"Task {i}.", "", f"Answer {i}.") for i in range(12)])
    ranks = [SFTBatches(encoded, batch_size=2, seq_len=16, rank=r, world_size=3) for r in range(3)]
    flat = [row for r in ranks for batch in _ids(r, 2) for row in batch]
    assert len(flat) == 12 and len(set(flat)) == 12  # 2 steps x 3 ranks x 2 = one epoch
    assert all(r.epoch == 0 for r in ranks)


def test_validation_batches_are_fixed_and_rank_disjoint():
    encoded = encode_examples([Example(f"Task {i}.", "", f"Answer {i}.") for i in range(11)])
    per_rank = [
        [
            x
            for x, _ in sft_data.padded_validation_batches(
                encoded, batch_size=2, seq_len=16, rank=r, world_size=2
            )
        ]
        for r in range(2)
    ]
    assert [len(b) for b in per_rank] == [2, 2]  # 11 // 4 whole steps; same count on each rank
    rows = [tuple(row.tolist()) for batches in per_rank for x in batches for row in x]
    assert len(set(rows)) == 8
    capped = list(
        sft_data.padded_validation_batches(encoded, batch_size=2, seq_len=16, max_tokens=40)
    )
    assert len(capped) == 1


def test_validation_batches_are_cut_to_their_longest_example_with_the_same_loss(tiny_model):
    """Padding is masked and attention causal: trimming it changes no loss, only the cost."""
    from gpt124m.eval.loss import evaluate_loss

    encoded = encode_examples(
        [Example(f"Task {i}." + " more" * i, "", "Answer." * (1 + i % 3)) for i in range(8)]
    )
    trimmed = list(sft_data.padded_validation_batches(encoded, batch_size=4, seq_len=64))
    widths = [x.shape[1] for x, _ in trimmed]
    assert widths == [max(len(e) for e in encoded[i : i + 4]) - 1 for i in (0, 4)]
    padded = [make_batch(encoded[i : i + 4], 64) for i in (0, 4)]  # the block, as before
    got = evaluate_loss(tiny_model, trimmed, device="cpu")
    want = evaluate_loss(tiny_model, padded, device="cpu")
    assert got["tokens"] == want["tokens"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
