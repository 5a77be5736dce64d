"""Device facts the trainer looks up (GPU peaks and power, native bf16), checked without a GPU."""

import pytest
import torch

from gpt124m.device import resolve_precision
from gpt124m.train import costs

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(
    "name, bf16_peak, watts",
    [
        ("NVIDIA H100 80GB HBM3", 989e12, 700),
        ("NVIDIA H100 PCIe", 756e12, 350),
        ("NVIDIA L40S", 362e12, 350),
        ("NVIDIA L40", 181e12, 300),
        ("NVIDIA L4", 121e12, 72),
        ("NVIDIA A100-SXM4-80GB", 312e12, 400),
        ("NVIDIA A10G", 125e12, 300),
        ("NVIDIA A10", 125e12, 150),
    ],
)
def test_gpu_names_match_their_own_entry(monkeypatch, name, bf16_peak, watts):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert costs.peak_flops(CUDA, torch.bfloat16) == bf16_peak
    assert costs.device_power_watts(CUDA) == watts


def test_unknown_gpu_falls_back_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU 9000")
    assert costs.peak_flops(CUDA, torch.float32) == 312e12
    assert "--peak-flops" in caplog.text
    assert costs.peak_flops(CUDA, torch.float32, override=5e12) == 5e12


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_uses_bf16_only_where_the_gpu_runs_it_natively(
    monkeypatch, native, expected
):
    def is_bf16_supported(including_emulation=True):
        return native or including_emulation  # a V100 or T4: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("bf16", CUDA) == torch.bfloat16
