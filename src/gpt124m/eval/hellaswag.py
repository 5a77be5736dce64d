"""HellaSwag under two scoring conventions, batched and sharded across ranks.

The two conventions differ by a few points on the same model, and published numbers mix them up,
so every result here is labelled with the one it used:

- `completion` (the seed's and build-nanogpt's script): context `ctx` as is, each ending scored
  as `" " + ending`; `acc` picks the lowest summed loss, `acc_norm` the lowest mean loss per
  ending token.
- `harness` (lm-evaluation-harness): query `preprocess(activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize())`, endings preprocessed and scored as `" " + ending`; `acc` picks the
  highest summed log-likelihood, `acc_norm` that divided by the ending's length in characters.

A batch runs each context once, left-padded, into a KV cache its endings share; attention masks
keep padding out of every real position, so a score does not depend on what shares its batch
(beyond the last bits of float rounding, which matrix kernels may vary with the batch's shape).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt124m.collectives import all_agree, all_reduce_sum, model_config
from gpt124m.device import autocast
from gpt124m.hf.offline import hub_unreachable

log = logging.getLogger(__name__)

HUB_REPO = "Rowan/hellaswag"
SPLIT = "validation"
CONVENTIONS = ("completion", "harness")
REQUIRED_FIELDS = ("activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label")
# Where the validation parquet has lived on the hub: the dataset's own files, then the hub's
# automatic parquet conversion of the script-based original.
HUB_REVISIONS = ("main", "refs/convert/parquet")
KNOWN_FILES = (
    ("main", "data/validation-00000-of-00001.parquet"),
    ("refs/convert/parquet", "default/validation/0000.parquet"),
)


class HellaSwagUnavailable(RuntimeError):
    """The data cannot be had: the hub download failed, or pyarrow is missing for parquet."""


@dataclasses.dataclass(frozen=True)
class HellaSwagItem:
    ind: int | str
    activity_label: str
    ctx_a: str
    ctx_b: str
    ctx: str
    endings: tuple[str, ...]
    label: int
    where: str = ""  # "file: line N", for error messages


# -- data ------------------------------------------------------------------------------------


def load_items(
    data: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[HellaSwagItem]:
    """The validation items from a local `.jsonl`/`.parquet` file, or (data None) from the hub.

    Raises HellaSwagUnavailable when the hub copy cannot be downloaded (or parquet cannot be
    read without pyarrow), FileNotFoundError for a missing local file and ValueError (naming
    the line) for malformed items.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    paths = [Path(data)] if data is not None else download(cache_dir=cache_dir)
    items: list[HellaSwagItem] = []
    for path in paths:
        for where, row in _read_rows(path):
            items.append(parse_item(row, where))
            if limit is not None and len(items) >= limit:
                return items
    if not items:
        raise ValueError(f"{', '.join(map(str, paths))}: no HellaSwag items")
    return items


def download(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The validation parquet file(s) of `Rowan/hellaswag`, via the Hugging Face cache."""
    from huggingface_hub import hf_hub_download, list_repo_files

    def fetch(revision: str, filename: str, local_only: bool) -> Path:
        return Path(
            hf_hub_download(
                HUB_REPO,
                filename,
                repo_type="dataset",
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_only,
            )
        )

    for revision, filename in KNOWN_FILES:  # a cached copy needs no network
        try:
            return [fetch(revision, filename, local_only=True)]
        except Exception:
            continue
    why = hub_unreachable()
    if why:
        raise HellaSwagUnavailable(
            f"HellaSwag ({HUB_REPO}) is not in the Hugging Face cache and the Hub cannot be "
            f"reached ({why}): "
            "pass --data FILE, a local .jsonl or .parquet copy of the validation split"
        )
    errors = []
    for revision in HUB_REVISIONS:
        try:
            files = list_repo_files(HUB_REPO, repo_type="dataset", revision=revision)
            wanted = sorted(f for f in files if f.endswith(".parquet") and SPLIT in f)
            if wanted:
                return [fetch(revision, f, local_only=False) for f in wanted]
            errors.append(f"{revision}: no {SPLIT} parquet file")
        except Exception as e:
            errors.append(f"{revision}: {type(e).__name__}: {e}")
    raise HellaSwagUnavailable(
        f"could not download the HellaSwag {SPLIT} split from the Hugging Face Hub "
        f"(dataset {HUB_REPO}; {'; '.join(errors)}). Pass a local copy with --data "
        "(.jsonl or .parquet in the official layout)."
    )


def _read_rows(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such HellaSwag file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}: line {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
                yield where, row
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise HellaSwagUnavailable(
                f"{path}: reading parquet needs pyarrow (pip install 'gpt124m[data]')"
            ) from None
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
        for n, row in enumerate(table.to_pylist(), 1):
            yield f"{path}: row {n}", row
    else:
        raise ValueError(f"{path}: expected a .jsonl or .parquet file, got {suffix or 'no suffix'}")


def parse_item(row: Any, where: str = "") -> HellaSwagItem:
    """Check one record of the official layout; errors name `where` (file and line)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    for key in ("activity_label", "ctx_a", "ctx_b", "ctx"):
        if not isinstance(row[key], str):
            raise ValueError(f"{where}: {key} must be a string, got {type(row[key]).__name__}")
    endings = row["endings"]
    if (
        not isinstance(endings, (list, tuple))
        or len(endings) < 2
        or not all(isinstance(e, str) for e in endings)
    ):
        raise ValueError(f"{where}: endings must be a list of at least 2 strings")
    label = row["label"]
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(
            f"{where}: label must be an integer (or a digit string), got {row['label']!r}"
            + (" (the test split has no labels)" if row["label"] == "" else "")
        )
    if not 0 <= label < len(endings):
        raise ValueError(f"{where}: label {label} is out of range for {len(endings)} endings")
    return HellaSwagItem(
        ind=row.get("ind", where),
        activity_label=row["activity_label"],
        ctx_a=row["ctx_a"],
        ctx_b=row["ctx_b"],
        ctx=row["ctx"],
        endings=tuple(endings),
        label=label,
        where=where,
    )


def preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag clean-up: WikiHow `[title]` markers become sentence
    breaks, other bracketed artefacts go, double spaces collapse once."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def harness_query(item: HellaSwagItem) -> str:
    return preprocess(item.activity_label + ": " + item.ctx_a + " " + item.ctx_b.capitalize())


# -- encoding --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncodedItem:
    """One item in tokens: a `context` shared by its `endings` (the tokens scored after it),
    and each ending's length in characters (the harness's normaliser)."""

    context: tuple[int, ...]
    endings: tuple[tuple[int, ...], ...]
    norm_chars: tuple[int, ...]
    label: int
    ind: int | str
    block_size: int

    @property
    def n_scored(self) -> tuple[int, ...]:
        return tuple(len(e) for e in self.endings)

    @property
    def rows(self) -> tuple[tuple[int, ...], ...]:
        """Context + ending j, left-truncated to block_size + 1 tokens (inputs + last target)."""
        return tuple((self.context + e)[-(self.block_size + 1) :] for e in self.endings)


def encode_items(
    items: Sequence[HellaSwagItem],
    convention: str,
    *,
    block_size: int,
    tokenizer=None,
) -> list[EncodedItem]:
    """Tokenize every item's context and endings under `convention`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}: choose {', '.join(CONVENTIONS)}")
    if tokenizer is None:
        from gpt124m.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    if convention == "completion":
        contexts = [it.ctx for it in items]
        endings = [list(it.endings) for it in items]
    else:
        contexts = [harness_query(it) for it in items]
        endings = [[preprocess(e) for e in it.endings] for it in items]
    ctx_ids = tokenizer.encode_batch(contexts)
    flat = [" " + e for ends in endings for e in ends]
    if convention == "completion":
        end_ids = tokenizer.encode_batch(flat)
    else:
        # As the harness does: encode context + continuation whole, then split at the context.
        owners = [i for i, ends in enumerate(endings) for _ in ends]
        whole = tokenizer.encode_batch([contexts[i] + c for i, c in zip(owners, flat, strict=True)])
        end_ids = [w[len(ctx_ids[i]) :] for i, w in zip(owners, whole, strict=True)]
    out, k = [], 0
    for item, ctx, ends in zip(items, ctx_ids, endings, strict=True):
        conts = [tuple(t) for t in end_ids[k : k + len(ends)]]
        k += len(ends)
        for cont in conts:
            if not cont:
                raise ValueError(f"{item.where}: an ending encodes to no tokens")
            if len(cont) > block_size:
                raise ValueError(
                    f"{item.where}: an ending of {len(cont)} tokens exceeds the model's "
                    f"block size {block_size}"
                )
        out.append(
            EncodedItem(
                # an empty context conditions on <|endoftext|>
                context=tuple(ctx) or (tokenizer.eot_id,),
                endings=tuple(conts),
                norm_chars=tuple(len(e) for e in ends),
                label=item.label,
                ind=item.ind,
                block_size=block_size,
            )
        )
    return out


# -- scoring ---------------------------------------------------------------------------------


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous slice [start, stop) of n items; slices are disjoint and cover n."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    per = math.ceil(n / world_size)
    return min(rank * per, n), min((rank + 1) * per, n)


def score_items(
    model: nn.Module,
    encoded: Sequence[EncodedItem],
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    desc: str = "HellaSwag",
) -> np.ndarray:
    """Summed log-probability of each ending, float64 [items, max endings] (NaN where an item
    has fewer endings). Each rank scores its own slice; with torch.distributed running the
    slices are summed across ranks, so every rank returns the full table."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    n = len(encoded)
    width = max((len(e.endings) for e in encoded), default=0)
    table = torch.zeros((n, width), dtype=torch.float64, device=device)
    start, stop = shard_bounds(n, rank, world_size)
    # Longest first: the largest batch shows up (or runs out of memory) at once, and items of
    # similar length share batches, so little compute goes to padding.
    mine = sorted(
        range(start, stop),
        key=lambda i: -(len(encoded[i].context) + max(encoded[i].n_scored)),
    )
    # Every rank runs the same number of batches, each of exactly two forward passes: FSDP
    # gathers weights in every forward, and ranks must meet in each.
    n_batches = math.ceil(math.ceil(n / world_size) / batch_size)
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=stop - start,
        desc=desc if world_size == 1 else f"{desc} (rank {rank}/{world_size})",
        unit="item",
        disable=not progress or rank != 0,
    )
    try:
        with torch.no_grad(), autocast(device, autocast_dtype):
            for b in range(n_batches):
                chunk = mine[b * batch_size : (b + 1) * batch_size]
                forwards = 0
                if chunk:
                    items = [encoded[i] for i in chunk]
                    sums, forwards = _score_batch(model, items, device, autocast_dtype)
                    rows = [(i, j) for i in chunk for j in range(len(encoded[i].endings))]
                    where = torch.tensor(rows, device=device)
                    table[where[:, 0], where[:, 1]] = sums
                for _ in range(forwards, 2):
                    model(torch.zeros((1, 1), dtype=torch.long, device=device))
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    all_reduce_sum(table)
    result = table.cpu().numpy()
    for i, e in enumerate(encoded):
        result[i, len(e.endings) :] = np.nan
    return result


def _score_batch(model, items, device, autocast_dtype) -> tuple[torch.Tensor, int]:
    """Summed log-probabilities of every (item, ending) row of `items`, and the number of
    forward passes spent.

    Each context runs once, left-padded, filling a KV cache that its endings then share: the
    context's tokens are computed once instead of once per ending, and the vocabulary
    projection runs only where an ending token is predicted. Where the padded batch would
    not fit the block size (a context needs truncating), every row runs on its own instead.
    """
    from gpt124m.model import KVCache

    config = model_config(model)
    ctx_len = max(len(e.context) for e in items)
    end_len = max(max(e.n_scored) for e in items) - 1  # the last ending token is never an input
    if ctx_len + end_len > config.block_size:
        return _score_rows(model, items, device), 1
    owner = torch.tensor([b for b, e in enumerate(items) for _ in e.endings], device=device)
    conts = [t for e in items for t in e.endings]
    ctx = torch.zeros((len(items), ctx_len), dtype=torch.long)
    ctx_mask = torch.zeros((len(items), ctx_len), dtype=torch.bool)
    for b, e in enumerate(items):
        ctx[b, ctx_len - len(e.context) :] = torch.tensor(e.context)
        ctx_mask[b, ctx_len - len(e.context) :] = True
    ctx, ctx_mask = ctx.to(device), ctx_mask.to(device)
    dtype = _activation_dtype(model, autocast_dtype)
    cache = KVCache(config, len(items), ctx_len, device, dtype)
    last, _ = model(ctx, attention_mask=ctx_mask, cache=cache, last_only=True)
    first = torch.tensor([t[0] for t in conts], device=device)
    logprobs = F.log_softmax(last[owner, 0].float(), dim=-1)
    sums = logprobs.gather(1, first[:, None]).squeeze(1).double()
    if end_len == 0:
        return sums, 1
    rows_cache = KVCache(config, len(conts), ctx_len + end_len, device, dtype)
    rows_cache.k[:, :, :, :ctx_len] = cache.k[:, owner]
    rows_cache.v[:, :, :, :ctx_len] = cache.v[:, owner]
    rows_cache.length = ctx_len
    del cache
    inputs = torch.zeros((len(conts), end_len), dtype=torch.long)
    targets = torch.full((len(conts), end_len), -100, dtype=torch.long)
    for k, t in enumerate(conts):
        inputs[k, : len(t) - 1] = torch.tensor(t[:-1])
        targets[k, : len(t) - 1] = torch.tensor(t[1:])
    inputs, targets = inputs.to(device), targets.to(device)
    mask = torch.cat([ctx_mask[owner], targets != -100], dim=1)
    logits, _ = model(inputs, attention_mask=mask, cache=rows_cache)
    return sums + _target_sums(logits, targets), 2


def _score_rows(model, items, device) -> torch.Tensor:
    """Every (context, ending) row on its own, right-padded: padding comes after every real
    token, so causal attention keeps it out of what the real positions compute."""
    rows = [(r, n) for e in items for r, n in zip(e.rows, e.n_scored, strict=True)]
    T = max(len(r) for r, _ in rows) - 1
    inputs = torch.zeros((len(rows), T), dtype=torch.long)
    targets = torch.full((len(rows), T), -100, dtype=torch.long)
    for k, (r, n) in enumerate(rows):
        L = len(r) - 1
        inputs[k, :L] = torch.tensor(r[:-1])
        targets[k, L - n : L] = torch.tensor(r[-n:])
    inputs, targets = inputs.to(device), targets.to(device)
    logits, _ = model(inputs)
    return _target_sums(logits, targets)


def _target_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row sum (float64) of the log-probabilities of targets; -100 is ignored."""
    scored = targets != -100
    logprobs = F.log_softmax(logits[scored].float(), dim=-1)
    picked = logprobs.gather(1, targets[scored].unsqueeze(1)).squeeze(1).double()
    rows = scored.nonzero()[:, 0]
    sums = torch.zeros(len(targets), dtype=torch.float64, device=targets.device)
    return sums.index_add_(0, rows, picked)


def _activation_dtype(model: nn.Module, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype attention keys and values come out in: what the KV cache must hold."""
    if autocast_dtype is not None and autocast_dtype != torch.float32:
        return autocast_dtype
    return next(model.parameters()).dtype


def summarize(encoded: Sequence[EncodedItem], logprobs: np.ndarray, convention: str):
    """(metrics, per-item records) for one convention from the summed log-probabilities."""
    records = []
    hits = hits_norm = 0
    for e, lp in zip(encoded, logprobs, strict=True):
        lp = lp[: len(e.endings)]
        if convention == "completion":
            loss_sum = -lp
            loss_mean = loss_sum / np.array(e.n_scored)
            pred, pred_norm = int(np.argmin(loss_sum)), int(np.argmin(loss_mean))
            detail = {
                "loss_sum": loss_sum.tolist(),
                "loss_mean": loss_mean.tolist(),
                "tokens": list(e.n_scored),
            }
        else:
            per_char = lp / np.maximum(np.array(e.norm_chars), 1)
            pred, pred_norm = int(np.argmax(lp)), int(np.argmax(per_char))
            detail = {
                "logprob": lp.tolist(),
                "logprob_per_char": per_char.tolist(),
                "chars": list(e.norm_chars),
            }
        hits += pred == e.label
        hits_norm += pred_norm == e.label
        records.append({"pred": pred, "pred_norm": pred_norm, **detail})
    n = len(encoded)
    metrics = {
        "acc": hits / n if n else float("nan"),
        "acc_norm": hits_norm / n if n else float("nan"),
        "n": n,
    }
    return metrics, records


@dataclasses.dataclass
class HellaSwagResult:
    """`metrics[convention]` = {"acc", "acc_norm", "n"}; `records` one dict per item."""

    metrics: dict[str, dict]
    records: list[dict]


def evaluate_detailed(
    model: nn.Module,
    items: Sequence[HellaSwagItem],
    *,
    conventions: Sequence[str] = CONVENTIONS,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    tokenizer=None,
) -> HellaSwagResult:
    """Score `items` under each convention; the same result on every rank. `tokenizer`
    (default GPT-2's) needs `encode_batch(texts)` and `eot_id`."""
    if not items:
        raise ValueError("no HellaSwag items to evaluate")
    block_size = model_config(model).block_size
    metrics, records = {}, [{"ind": it.ind, "label": it.label} for it in items]
    for convention in conventions:
        encoded = encode_items(items, convention, block_size=block_size, tokenizer=tokenizer)
        table = score_items(
            model,
            encoded,
            batch_size=batch_size,
            device=device,
            autocast_dtype=autocast_dtype,
            rank=rank,
            world_size=world_size,
            progress=progress,
            desc=f"HellaSwag {convention}",
        )
        metrics[convention], per_item = summarize(encoded, table, convention)
        for record, detail in zip(records, per_item, strict=True):
            record[convention] = detail
    return HellaSwagResult(metrics=metrics, records=records)


def evaluate(
    model: nn.Module,
    items: Sequence[HellaSwagItem],
    *,
    conventions: Sequence[str] = CONVENTIONS,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    predictions_path: str | os.PathLike | None = None,
    tokenizer=None,
) -> dict:
    """{convention: {"acc", "acc_norm", "n"}}; rank 0 writes per-item predictions (.jsonl)."""
    result = evaluate_detailed(
        model,
        items,
        conventions=conventions,
        batch_size=batch_size,
        device=device,
        autocast_dtype=autocast_dtype,
        rank=rank,
        world_size=world_size,
        progress=progress,
        tokenizer=tokenizer,
    )
    if predictions_path is not None and rank == 0:
        write_predictions(result.records, predictions_path)
    return result.metrics


def write_predictions(records: Sequence[dict], path: str | os.PathLike) -> Path:
    from gpt124m.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


# -- trainer hook ----------------------------------------------------------------------------


class HellaSwagHook:
    """For the trainer: `--hellaswag-every K`. Tokenizes the items once (cached), runs the
    completion convention across ranks. When the data cannot be had it warns once and
    returns None from then on, so training carries on."""

    def __init__(
        self,
        data: str | os.PathLike | None = None,
        *,
        limit: int | None = None,
        batch_size: int = 16,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.data, self.limit, self.batch_size, self.cache_dir = data, limit, batch_size, cache_dir
        self._items: list[HellaSwagItem] | None = None
        self._unavailable: str | None = None
        self._encoded: dict[int, list[EncodedItem]] = {}

    def prepare(self, *, rank: int = 0) -> bool:
        """Load the items now (else on the first call); False if they cannot be had, with one
        warning from rank 0. Malformed data still raises ValueError: a mistake to fix."""
        if self._items is None and self._unavailable is None:
            try:
                self._items = load_items(self.data, limit=self.limit, cache_dir=self.cache_dir)
            except (HellaSwagUnavailable, FileNotFoundError) as e:
                self._unavailable = str(e)
                if rank == 0:
                    log.warning("HellaSwag evaluation disabled for this run: %s", e)
        return self._items is not None

    def __call__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str,
        autocast_dtype: torch.dtype | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> dict | None:
        device = torch.device(device)
        if not all_agree(self.prepare(rank=rank), device):
            return None
        block_size = model_config(model).block_size
        if block_size not in self._encoded:
            self._encoded[block_size] = encode_items(
                self._items, "completion", block_size=block_size
            )
        encoded = self._encoded[block_size]
        table = score_items(
            model,
            encoded,
            batch_size=self.batch_size,
            device=device,
            autocast_dtype=autocast_dtype,
            rank=rank,
            world_size=world_size,
            progress=False,
        )
        metrics, _ = summarize(encoded, table, "completion")
        return metrics
