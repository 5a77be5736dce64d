"""Process-group teardown: all ranks meet before it on success, nobody waits on a failure;
each rank's own dropout."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train import distributed


@pytest.mark.parametrize("fails", [False, True])
def test_shutdown_waits_for_the_peers_only_on_the_normal_path(tmp_path, monkeypatch, fails):
    calls = []
    barrier = dist.barrier

    def spy(*args, **kwargs):
        calls.append("barrier")
        return barrier(*args, **kwargs)

    monkeypatch.setattr(dist, "barrier", spy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    with contextlib.suppress(RuntimeError):
        try:
            if fails:
                raise RuntimeError("this rank failed")
        finally:
            distributed.shutdown()
    assert calls == ([] if fails else ["barrier"])
    assert not dist.is_initialized()


RANK_MASKS = """
import dataclasses, json, sys, torch
from gpt124m.config import get_preset
from gpt124m.model import GPT
from gpt124m.train.config import TrainConfig
from gpt124m.train.trainer import fit

class Same:  # both ranks see the same batch, so only the dropout masks can differ
    def next_batch(self):
        x = torch.arange(2 * 17).reshape(2, 17) % 1000
        return x[:, :-1], x[:, 1:]
    def state_dict(self): return {}
    def load_state_dict(self, state): pass

torch.manual_seed(0)
model = GPT(dataclasses.replace(get_preset("tiny"), dropout=0.5))
masks = []
model.transformer.drop.register_forward_hook(lambda m, i, o: masks.append((o == 0).tolist()))
cfg = TrainConfig(out_dir=sys.argv[1], seq_len=16, micro_batch_size=2, total_batch_tokens=128,
                  max_steps=1, warmup_steps=0, precision="fp32", eval_every=0, sample_every=0,
                  checkpoint_every=0, dropout=0.5)
fit(cfg, model, Same())
rank = torch.distributed.get_rank()
open(f"{sys.argv[1]}/masks{rank}.json", "w").write(json.dumps(masks))
"""


def test_each_rank_draws_its_own_dropout_masks(tmp_path):
    """Two ranks under DDP equal one process accumulating two micro-batches only if their
    dropout masks differ as that process's do; seeded alike, they were the same."""
    script = tmp_path / "masks.py"
    script.write_text(textwrap.dedent(RANK_MASKS))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"masks{r}.json").read_text()) for r in (0, 1))
    assert len(zero) == len(one) == 2  # micro-batches of 2 rows, two per rank
    assert zero != one


def test_fsdp_in_one_process_says_nothing_is_sharded(caplog):
    """`--parallel fsdp` without torchrun trains as one process; it was silent about it."""
    model = GPT(get_preset("tiny"))
    with caplog.at_level("WARNING"):
        assert distributed.wrap(model, distributed.Dist(), "fsdp") is model
        distributed.wrap(model, distributed.Dist(), "ddp")
    assert caplog.text.count("not under torchrun") == 1
