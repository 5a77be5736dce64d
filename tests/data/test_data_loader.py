import json
import re

import numpy as np
import pytest
import torch

from gpt124m.data import shards as fmt
from gpt124m.data.loader import (
    TokenLoader,
    WindowPermutation,
    load_shard,
    token_batches,
    validation_batches,
    validation_budget,
)

SIZES = (1000, 700, 1300, 450)


@pytest.fixture
def data_dir(tmp_path, make_data_dir):
    ids = np.arange(sum(SIZES) + 500)  # every token unique, so positions can be recovered
    train = np.split(ids[: sum(SIZES)], np.cumsum(SIZES)[:-1])
    return make_data_dir(tmp_path / "d", train, val=[ids[sum(SIZES) :]])


SHARD_FIRST = np.cumsum([0, *SIZES[:-1]])  # first token id of each train shard


def locate(row):
    """(shard, offset) of a window, found from its first token id (ids are unique)."""
    shard = int(np.searchsorted(SHARD_FIRST, int(row[0]), side="right")) - 1
    return shard, int(row[0]) - int(SHARD_FIRST[shard])


def read_epoch(loaders):
    """One epoch's windows from every rank: rows of x with y's last token appended."""
    rows = []
    for _ in range(loaders[0].steps_per_epoch):
        for loader in loaders:
            x, y = loader.next_batch()
            rows.extend(torch.cat([x, y[:, -1:]], dim=1).numpy())
    return rows


def test_load_shard_roundtrip(tmp_path):
    tokens = np.array([0, 1, 50256, 1234], dtype=np.uint16)
    fmt.write_shard(tmp_path / "s.bin", tokens)
    assert np.array_equal(load_shard(tmp_path / "s.bin"), tokens)
    assert (tmp_path / "s.bin").stat().st_size == fmt.HEADER_SIZE + 2 * len(tokens)


def test_batches_are_shifted_windows_of_the_data(data_dir):
    x, y = TokenLoader(data_dir, batch_size=3, seq_len=8).next_batch()
    assert x.shape == y.shape == (3, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    rows = torch.cat([x, y[:, -1:]], dim=1)
    # every row is 9 consecutive tokens of one shard (ids count up through each shard)
    assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones(3, 8, dtype=torch.int64))
    for row in rows.numpy():
        shard, offset = locate(row)
        assert offset + 9 <= SIZES[shard]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_are_disjoint_and_cover_each_epoch(data_dir, world_size):
    B, T = 2, 16
    loaders = [
        TokenLoader(data_dir, batch_size=B, seq_len=T, rank=r, world_size=world_size, seed=7)
        for r in range(world_size)
    ]
    shifts_by_epoch = []
    for epoch in range(3):
        assert all(loader.epoch == epoch for loader in loaders)
        rows = read_epoch(loaders)
        xs = np.concatenate([row[:-1] for row in rows])
        assert len(np.unique(xs)) == len(xs), "ranks (or steps) overlapped"
        where = [locate(row) for row in rows]
        # each shard is cut at one shift this epoch, and the epoch covers all its windows but
        # fewer than one step's worth (the last partial step)
        shifts = {}
        for shard, offset in where:
            assert shifts.setdefault(shard, offset % T) == offset % T
        every = {
            (shard, start)
            for shard, shift in shifts.items()
            for start in range(shift, SIZES[shard] - T, T)
        }
        assert set(where) <= every
        assert len(shifts) == len(SIZES)
        assert len(every) - len(where) < world_size * B
        shifts_by_epoch.append(tuple(sorted(shifts.items())))
    assert len(set(shifts_by_epoch)) > 1, "the windows' cut points should move between epochs"


def test_steps_draw_from_places_spread_over_the_data(data_dir):
    rows = read_epoch([TokenLoader(data_dir, batch_size=4, seq_len=16, seed=3)])
    places = [int(SHARD_FIRST[shard]) + offset for shard, offset in map(locate, rows)]
    # contiguous reading gives neighbours 16 tokens apart; shuffled windows jump across the data
    assert np.median(np.abs(np.diff(places))) > 10 * 16
    steps = [rows[i : i + 4] for i in range(0, len(rows), 4)]
    assert np.mean([len({locate(r)[0] for r in step}) > 1 for step in steps]) > 0.5


def test_order_is_seeded_and_changes_every_epoch(data_dir):
    def first_epochs(seed):
        loader = TokenLoader(data_dir, batch_size=2, seq_len=16, seed=seed)
        return [[tuple(r) for r in read_epoch([loader])] for _ in range(2)]

    a0, a1 = first_epochs(1)
    assert first_epochs(1) == [a0, a1]
    assert a0[: len(a1)] != a1[: len(a0)], "epoch 1 should not replay epoch 0"
    assert first_epochs(2)[0] != a0


def test_window_permutation_is_a_bijection_and_needs_no_table():
    for n in (1, 2, 3, 7, 64, 1000, 4099):
        perm = WindowPermutation(n, [5, n])(np.arange(n))
        assert sorted(perm.tolist()) == list(range(n))
    assert WindowPermutation(1000, [0])(np.arange(1000)).tolist() != list(range(1000))
    # a FineWeb-Edu-sized epoch (10B tokens / 1024): a few indices, without a 10M-entry table
    huge = WindowPermutation(9_765_625, [0, 0])
    picked = huge(np.arange(576))
    assert len(set(picked.tolist())) == 576 and picked.max() < 9_765_625
    with pytest.raises(IndexError):
        huge(np.array([9_765_625]))


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


def test_state_for_another_seq_len_is_rejected_and_old_states_continue(data_dir, caplog):
    state = TokenLoader(data_dir, batch_size=2, seq_len=16).state_dict()
    with pytest.raises(ValueError, match="--seq-len 16"):
        TokenLoader(data_dir, batch_size=2, seq_len=32).load_state_dict(state)
    # a checkpoint of the contiguous loader (version 1), half-way through epoch 2
    old = {"version": 1, "seed": 4, "epoch": 2, "position": sum(SIZES) // 2, "data": state["data"]}
    loader = TokenLoader(data_dir, batch_size=2, seq_len=16)
    loader.load_state_dict(old)
    assert "older gpt124m" in caplog.text
    assert loader.epoch == 2 and loader.seed == 4
    assert loader.state_dict()["position"] == round(loader.windows_per_epoch / 2)
    with pytest.raises(ValueError, match="version 7"):
        loader.load_state_dict({**state, "version": 7})


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
    with pytest.raises(ValueError, match="cannot fill one sequence of 10 on each of 2"):
        token_batches(tokens, batch_size=2, seq_len=10, max_tokens=19, rank=1, world_size=2)


def test_the_tokens_scored_do_not_depend_on_the_batch_size():
    """Only whole sequences, the same number per rank; the last batch may be short. So an
    `auto` micro-batch, or another GPU, scores the same tokens (here all 9 x 10 of 95)."""
    tokens = np.arange(1000, dtype=np.uint16)

    def scored(batch_size, world_size=1):
        pairs = []
        for rank in range(world_size):
            for x, y in token_batches(
                tokens,
                batch_size=batch_size,
                seq_len=10,
                max_tokens=95,
                rank=rank,
                world_size=world_size,
            ):
                assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
                pairs += list(zip(x.flatten().tolist(), y.flatten().tolist(), strict=True))
        return sorted(pairs)

    every = sorted((t, t + 1) for t in range(90))  # the reference: the first 9 whole sequences
    for batch_size in (1, 2, 4, 9, 16):
        assert scored(batch_size) == every
    shapes = [x.shape[0] for x, _ in token_batches(tokens, batch_size=4, seq_len=10, max_tokens=95)]
    assert shapes == [4, 4, 1]
    # two ranks: 4 sequences each, in as many batches of the same shapes on both
    assert scored(3, world_size=2) == every[:80]
    per_rank = [
        [x.shape for x, _ in token_batches(tokens, batch_size=3, seq_len=10, max_tokens=95,
                                           rank=r, world_size=2)]
        for r in range(2)
    ]  # fmt: skip
    assert per_rank[0] == per_rank[1] == [torch.Size([3, 10]), torch.Size([1, 10])]
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


def overwrite_ids(path, start, count, value=0xFFFF):
    """Replace `count` tokens of a shard from `start` with `value`, as a new file (new inode)."""
    data = bytearray(path.read_bytes())
    at = fmt.HEADER_SIZE + 2 * start
    data[at : at + 2 * count] = np.full(count, value, dtype="<u2").tobytes()
    path.unlink()
    path.write_bytes(bytes(data))


def test_ids_outside_the_vocabulary_are_refused_on_every_path(data_dir):
    """0xFFFF in a shard made the embedding fail mid-run (IndexError; on CUDA a device-side
    assert): every reader refuses the file when it opens it, naming it and the first bad id."""
    TokenLoader(data_dir, batch_size=2, seq_len=8)  # checked and fine: remembered
    validation_batches(data_dir, batch_size=2, seq_len=8, max_tokens=None)
    overwrite_ids(data_dir / "train_000001.bin", 123, 5)
    with pytest.raises(ValueError, match=r"corrupt shard .*train_000001\.bin: token id 65535 at "
                       r"position 123 is outside the vocabulary of 50,257"):  # fmt: skip
        TokenLoader(data_dir, batch_size=2, seq_len=8, rank=1, world_size=2)
    overwrite_ids(data_dir / "val_000000.bin", 7, 1, value=50257)  # the first id past the end
    for read in (validation_batches, validation_budget):
        with pytest.raises(ValueError, match=r"val_000000\.bin: token id 50257 at position 7"):
            if read is validation_budget:
                read(data_dir, 10)
            else:
                read(data_dir, batch_size=2, seq_len=8, max_tokens=16, rank=1, world_size=2)


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


def set_field(field, value, shard=None):
    def edit(manifest):
        (manifest if shard is None else manifest["shards"][shard])[field] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        # each was a TypeError or KeyError traceback (rc 1), or silently accepted
        (set_field("shards", "x"), "shards must be a list of shard entries, got str"),
        (set_field("dtype", "float64"), "dtype is 'float64'; shards hold uint16 tokens"),
        (
            set_field("name", "../d/train_000000.bin", 1),
            "shards[1].name '../d/train_000000.bin' is not a file name inside the data",
        ),
        (set_field("name", "/etc/passwd", 1), "shards[1].name '/etc/passwd' is not a file name"),
        (set_field("name", "val_000000.bin", 1), "shards[1].name 'val_000000.bin' is listed twice"),
        (set_field("split", "Train", 2), "shards[2].split must be 'train' or 'val', got 'Train'"),
        (set_field("tokens", "1000", 1), "shards[1].tokens must be a count of tokens, got '1000'"),
        (set_field("sha256", None, 1), "shards[1].sha256 must be a hex digest, got None"),
        (lambda m: m["shards"].append(["train_000009.bin"]), "shards[5] must be an object"),
    ],
)
def test_manifest_fields_are_checked_as_it_is_read(data_dir, edit, message):
    """Refused naming the manifest and the field; a name leading out of the directory (here
    back into it, through its parent) is never followed."""
    path = data_dir / fmt.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    expected = re.escape(f"corrupt manifest {path}: {message}")
    with pytest.raises(ValueError, match=expected):
        TokenLoader(data_dir, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match=expected):
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
