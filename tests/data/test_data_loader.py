import json

import numpy as np
import pytest
import torch

from gpt124m.data import shards as fmt
from gpt124m.data.loader import TokenLoader, load_shard, token_batches, validation_batches

SIZES = (1000, 700, 1300, 450)


@pytest.fixture
def data_dir(tmp_path, make_data_dir):
    ids = np.arange(sum(SIZES) + 500)  # every token unique, so positions can be recovered
    train = np.split(ids[: sum(SIZES)], np.cumsum(SIZES)[:-1])
    return make_data_dir(tmp_path / "d", train, val=[ids[sum(SIZES) :]])


def epoch_stream(loader, data_dir):
    order = loader.state_dict()["shard_order"]
    return np.concatenate([load_shard(data_dir / name) for name in order]).astype(np.int64)


def test_load_shard_roundtrip(tmp_path):
    tokens = np.array([0, 1, 50256, 1234], dtype=np.uint16)
    fmt.write_shard(tmp_path / "s.bin", tokens)
    assert np.array_equal(load_shard(tmp_path / "s.bin"), tokens)
    assert (tmp_path / "s.bin").stat().st_size == fmt.HEADER_SIZE + 2 * len(tokens)


def test_batches_are_shifted_pairs(data_dir):
    x, y = TokenLoader(data_dir, batch_size=3, seq_len=8).next_batch()
    assert x.shape == y.shape == (3, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x.flatten()[1:], y.flatten()[:-1])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_are_disjoint_and_cover_each_epoch(data_dir, world_size):
    B, T = 2, 16
    loaders = [
        TokenLoader(data_dir, batch_size=B, seq_len=T, rank=r, world_size=world_size, seed=7)
        for r in range(world_size)
    ]
    steps = loaders[0].steps_per_epoch
    assert steps == (sum(SIZES) - 1) // (world_size * B * T)
    for epoch in range(3):
        seen = []
        for loader in loaders:
            for _ in range(steps):
                x, y = loader.next_batch()
                assert loader.epoch == epoch
                seen.append(x.flatten().numpy())
        stream = epoch_stream(loaders[0], data_dir)  # the order of the epoch just read
        seen = np.concatenate(seen)
        assert len(np.unique(seen)) == len(seen), "ranks overlapped"
        covered = steps * world_size * B * T
        assert set(seen.tolist()) == set(stream[:covered].tolist())
        assert len(stream) - covered < world_size * B * T + 1


def test_shard_order_is_shuffled_per_epoch_from_the_seed(data_dir):
    loader = TokenLoader(data_dir, batch_size=2, seq_len=16, seed=1)
    orders = []
    for _ in range(6):
        orders.append(tuple(loader.state_dict()["shard_order"]))
        for _ in range(loader.steps_per_epoch):
            loader.next_batch()
        loader.next_batch()  # first batch of the next epoch
    assert len(set(orders)) > 1
    again = TokenLoader(data_dir, batch_size=2, seq_len=16, seed=1)
    assert tuple(again.state_dict()["shard_order"]) == orders[0]
    other = [TokenLoader(data_dir, batch_size=2, seq_len=16, seed=s) for s in range(2, 8)]
    assert {tuple(o.state_dict()["shard_order"]) for o in other} != {orders[0]}


@pytest.mark.parametrize("world_size", [1, 2])
def test_state_dict_resumes_exactly(data_dir, world_size):
    kw = dict(batch_size=2, seq_len=32, world_size=world_size, seed=5)
    for rank in range(world_size):
        ref = TokenLoader(data_dir, rank=rank, **kw)
        for _ in range(ref.steps_per_epoch + 7):  # into epoch 1, mid-epoch
            ref.next_batch()
        state = json.loads(json.dumps(ref.state_dict()))
        assert state["epoch"] == 1
        expected = [ref.next_batch() for _ in range(2 * ref.steps_per_epoch)]
        resumed = TokenLoader(data_dir, rank=rank, **{**kw, "seed": 0})
        resumed.load_state_dict(state)
        assert resumed.epoch == 1
        for want, got in zip(expected, (resumed.next_batch() for _ in expected), strict=True):
            assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_state_from_other_data_is_rejected(data_dir, tmp_path, make_data_dir):
    state = TokenLoader(data_dir, batch_size=2, seq_len=8).state_dict()
    other = make_data_dir(tmp_path / "other", [np.arange(5000)])
    with pytest.raises(ValueError, match="different train shards"):
        TokenLoader(other, batch_size=2, seq_len=8).load_state_dict(state)


def test_validation_is_deterministic_and_rank_disjoint(data_dir):
    kw = dict(batch_size=2, seq_len=16, max_tokens=320)
    a = [x for x, _ in validation_batches(data_dir, **kw)]
    b = [x for x, _ in validation_batches(data_dir, **kw)]
    assert len(a) == 10 and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    ranks = [
        torch.cat(
            [x.flatten() for x, _ in validation_batches(data_dir, rank=r, world_size=2, **kw)]
        )
        for r in range(2)
    ]
    assert set(ranks[0].tolist()).isdisjoint(ranks[1].tolist())
    assert sorted(torch.cat(ranks).tolist()) == sorted(torch.cat(a).flatten().tolist())


def test_token_batches_budget_and_errors():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(token_batches(tokens, batch_size=2, seq_len=10, max_tokens=100))
    assert len(batches) == 5
    assert batches[-1][1].flatten()[-1].item() == 100
    with pytest.raises(ValueError, match="cannot fill one step"):
        token_batches(tokens, batch_size=2, seq_len=10, max_tokens=19)
    with pytest.raises(ValueError, match="rank"):
        token_batches(tokens, batch_size=2, seq_len=10, max_tokens=None, rank=2, world_size=2)


def corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "magic":
        data[:8] = b"NOTMAGIC"
    elif how == "truncated":
        data = data[:-6]
    elif how == "version":
        data[8] = 99
    elif how == "header_vocab":
        fmt.HEADER.pack_into(data, 0, fmt.MAGIC, 1, 1, (len(data) - 64) // 2, 100277, 100257)
    elif how == "count":
        data += b"\0\0"
        fmt.HEADER.pack_into(data, 0, fmt.MAGIC, 1, 1, (len(data) - 64) // 2, 50257, 50256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how, message",
    [
        ("magic", "bad magic"),
        ("truncated", "size mismatch"),
        ("version", "format version 99"),
        ("header_vocab", "vocabulary of 100277"),
        ("count", "the manifest says"),
        ("missing", "shard missing"),
    ],
)
def test_corrupt_shard_errors(data_dir, how, message):
    shard = data_dir / "train_000001.bin"
    if how == "missing":
        shard.unlink()
    else:
        corrupt(shard, how)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        TokenLoader(data_dir, batch_size=2, seq_len=8)
    if how in ("magic", "truncated", "version", "missing"):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_shard(shard)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"tokenizer": "cl100k_base"}, "tokenizer 'cl100k_base'"),
        ({"vocab_size": 50304}, "vocabulary 50304"),
        ({"complete": False}, "unfinished preparation"),
        ({"format": "other"}, "not a gpt124m token manifest"),
    ],
)
def test_manifest_mismatch_errors(data_dir, edit, message):
    path = data_dir / fmt.MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(ValueError, match=message):
        TokenLoader(data_dir, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match=message):
        validation_batches(data_dir, batch_size=2, seq_len=8, max_tokens=None)


def test_missing_or_broken_manifest(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="not a prepared data directory"):
        TokenLoader(tmp_path, batch_size=2, seq_len=8)
    (data_dir / fmt.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        TokenLoader(data_dir, batch_size=2, seq_len=8)


def test_too_little_data(tmp_path, make_data_dir):
    d = make_data_dir(tmp_path / "small", [np.arange(100)])
    with pytest.raises(ValueError, match="100 train tokens"):
        TokenLoader(d, batch_size=4, seq_len=32)
    with pytest.raises(ValueError, match="no val shards"):
        validation_batches(d, batch_size=2, seq_len=8, max_tokens=None)
