import pytest
import torch


class FixedBatches:
    """An in-memory BatchSource: the same or cycling batches, with a resumable position."""

    def __init__(self, n_batches=1, batch_size=4, seq_len=32, vocab=1000, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [
            torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
            for _ in range(n_batches)
        ]
        self.i = 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b[:, :-1], b[:, 1:]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


@pytest.fixture
def fixed_batches():
    return FixedBatches
