import json
import os
import sys

import pytest
import torch

from gpt124m.checkpoint import save_pretrained
from gpt124m.config import get_preset
from gpt124m.model import GPT

ACTIVITIES = ["Cooking", "Personal Care and Style", "Sports", "Home and Garden"]
SUBJECTS = ["A man", "A woman", "Two kids", "The chef", "A dog", "An old farmer"]
VERBS = ["stands in a kitchen", "walks to the lake", "opens a box", "climbs a ladder"]


def hellaswag_rows(n=12):
    """Official-layout HellaSwag records of varied lengths, with WikiHow-style brackets."""
    rows = []
    for i in range(n):
        ctx_a = f"{SUBJECTS[i % len(SUBJECTS)]} {VERBS[i % len(VERBS)]}." + " It is sunny." * (
            i % 3
        )
        ctx_b = "then" if i % 2 else "[header] he carefully"
        rows.append(
            {
                "ind": 100 + i,
                "activity_label": ACTIVITIES[i % len(ACTIVITIES)],
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": f"{ctx_a} {ctx_b}",
                "endings": [
                    "picks up a red apple and eats it.",
                    "jumps [title] over the  fence" + " again" * (i % 4) + ".",
                    "sings a song.",
                    "[step] looks at the camera and smiles while the crowd cheers loudly.",
                ],
                "label": str(i % 4),
                "source_id": f"src~{i}",
                "split": "val",
                "split_type": "indomain",
            }
        )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def rows():
    return hellaswag_rows()


@pytest.fixture
def make_rows():
    return hellaswag_rows


@pytest.fixture
def make_jsonl():
    return write_jsonl


@pytest.fixture
def make_parquet():
    return write_parquet


@pytest.fixture
def jsonl_file(tmp_path, rows):
    return write_jsonl(tmp_path / "hellaswag_val.jsonl", rows)


def lively_tiny_model(seed=0):
    """The tiny preset with wide random weights. A model fresh from GPT-2's init predicts
    nearly uniformly, so a scoring bug (a shifted target, a leaking pad) would change its
    scores by less than a test could tell; these weights give every ending its own score."""
    g = torch.Generator().manual_seed(seed)
    model = GPT(get_preset("tiny"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_gain = ".ln_" in name or "ln_f" in name
            std = {"transformer.wte.weight": 0.3, "transformer.wpe.weight": 1.0}.get(name, 0.4)
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_norm_gain else 0.0))
    return model.eval()


@pytest.fixture
def model():
    """A fresh lively tiny model per test (tests may switch its mode)."""
    return lively_tiny_model()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return save_pretrained(lively_tiny_model(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def torchrun():
    """argv for `torchrun --nproc_per_node N -m gpt124m ...`, and an environment for it."""

    def argv(nproc, *args):
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "gpt124m",
            *args,
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return argv, env
