"""HellaSwag under two scoring conventions: results for `gpt124m eval hellaswag` and the trainer.

The two conventions differ by a few points on the same model, and published numbers mix them up,
so every result here is labelled with the one it used:

- `completion` (the seed's and build-nanogpt's script): context `ctx` as is, each ending scored
  as `" " + ending`; `acc` picks the lowest summed loss, `acc_norm` the lowest mean loss per
  ending token.
- `harness` (lm-evaluation-harness): query `preprocess(activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize())`, endings preprocessed and scored as `" " + ending`; `acc` picks the
  highest summed log-likelihood, `acc_norm` that divided by the ending's length in characters.

The data and both conventions' encodings are in `eval/hellaswag_data.py`, the batched scorer in
`eval/multiple_choice.py`; this module turns scores into results, and is the trainer's hook.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gpt124m.collectives import all_agree, model_config
from gpt124m.eval.hellaswag_data import (
    CONVENTIONS,
    LOCAL_COPY_HINT,
    HellaSwagItem,
    HellaSwagUnavailable,
    encode_items,
    load_items,
)
from gpt124m.eval.multiple_choice import EncodedItem, score_items

__all__ = [
    "CONVENTIONS",
    "HellaSwagHook",
    "HellaSwagItem",
    "HellaSwagResult",
    "HellaSwagUnavailable",
    "encode_items",
    "evaluate",
    "load_items",
    "summarize",
    "write_predictions",
]

log = logging.getLogger(__name__)


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
) -> HellaSwagResult:
    """Score `items` under each convention; the same result on every rank. Rank 0 writes the
    per-item predictions (.jsonl) to `predictions_path` if given. `tokenizer` (default GPT-2's)
    needs `encode_batch(texts)` and `eot_id`."""
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
    if predictions_path is not None and rank == 0:
        write_predictions(records, predictions_path)
    return HellaSwagResult(metrics=metrics, records=records)


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
        warning from rank 0. A local file that is missing or malformed still raises: a
        mistake to fix, not a run to finish without its scores."""
        if self._items is None and self._unavailable is None:
            try:
                self._items = load_items(self.data, limit=self.limit, cache_dir=self.cache_dir)
            except HellaSwagUnavailable as e:
                self._unavailable = str(e)
                hint = f"; pass --hellaswag-data FILE, {LOCAL_COPY_HINT}"
                if rank == 0:
                    log.warning("HellaSwag evaluation disabled for this run: %s%s", e, hint)
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
