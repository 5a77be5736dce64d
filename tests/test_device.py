"""The CUDA-only settings and copies in gpt124m.device, checked without a GPU: they must leave CPU
runs exactly as they were."""

import pytest
import torch

from gpt124m import device
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


def _cgroup(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("version", [2, 1])
def test_host_memory_counts_a_cgroups_reclaimable_page_cache_as_free(tmp_path, version):
    """A container capped at 2 GiB, 1.9 GiB in use of which 1.5 GiB is inactive page cache (the
    shards a run just wrote): about 1.6 GiB can still be had, not 0.1."""
    gib = 2**30
    names = (
        ("memory.max", "memory.current", "memory.stat", "inactive_file")
        if version == 2
        else ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
              "memory/memory.stat", "total_inactive_file")
    )  # fmt: skip
    limit, usage, stat, cache = names
    stats = f"active_file 1\n{cache} {int(1.5 * gib)}\nanon 7\n"
    root = _cgroup(tmp_path, {limit: str(2 * gib), usage: str(int(1.9 * gib)), stat: stats})
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16777216 kB\nMemAvailable:  8388608 kB\n")  # 8 GiB
    free = 2 * gib - (int(1.9 * gib) - int(1.5 * gib))
    assert device.available_host_memory(root, meminfo) == free
    # no cap: the host's own figure; neither readable: unknown
    no_cap = _cgroup(tmp_path / "none", {limit: "max" if version == 2 else str(2**63 - 4096)})
    assert device.available_host_memory(no_cap, meminfo) == 8 * gib
    assert device.available_host_memory(tmp_path / "x", tmp_path / "y") is None


def test_a_cgroup_cap_holds_when_its_stat_file_cannot_be_read(tmp_path):
    gib = 2**30
    root = _cgroup(tmp_path, {"memory.max": str(gib), "memory.current": str(gib // 4)})
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:  8388608 kB\n")
    assert device.available_host_memory(root, meminfo) == gib - gib // 4
