"""The CUDA-only settings and copies in gpt124m.device, checked without a GPU: they must leave CPU
runs exactly as they were."""

import pytest
import torch

from gpt124m.device import TF32_ENV, is_out_of_memory, to_device, use_tf32

OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_is_turned_on_for_cuda_only_and_can_be_refused(monkeypatch, tf32_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert use_tf32(torch.device("cpu")) is False
    assert torch.backends.cuda.matmul.allow_tf32 is False  # CPU runs change nothing
    monkeypatch.delenv(TF32_ENV, raising=False)
    assert use_tf32(torch.device("cuda", 0)) is True
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; Inductor reads it
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    monkeypatch.setenv(TF32_ENV, "0")
    assert use_tf32(torch.device("cuda", 0)) is False
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_cpu_batches_stay_as_they_are():
    x = torch.arange(6).view(2, 3)
    assert to_device(x, torch.device("cpu")) is x
    assert torch.equal(to_device(x[:, 1:], torch.device("cpu")), x[:, 1:])


def test_batches_go_to_cuda_pinned_contiguous_and_without_waiting(monkeypatch):
    """What the CUDA path hands to the copy (this CPU build can pin nothing, so the two tensor
    methods record instead): a view such as `ids[:, :-1]` is pinned as a contiguous tensor, and
    the copy does not block the host."""
    calls = []

    def pin_memory(self):
        calls.append(("pin_memory", self.is_contiguous()))
        return self.clone()

    def to(self, device, non_blocking=False):
        calls.append(("to", str(device), non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    ids = torch.arange(12).view(3, 4)
    out = to_device(ids[:, :-1], torch.device("cuda", 0))
    assert calls == [("pin_memory", True), ("to", "cuda:0", True)]
    assert torch.equal(out, ids[:, :-1])


def test_out_of_memory_is_told_apart_from_other_errors():
    assert is_out_of_memory(OOM("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))
