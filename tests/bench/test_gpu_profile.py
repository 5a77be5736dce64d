"""bench/gpu_profile.py: the kernel-time breakdown the GPU run records for each compiled step."""

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def gpu_profile():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_profile
    finally:
        sys.path.remove(str(BENCH))
    return gpu_profile


# Kernel names as CUDA profilers print them (cuBLAS, cuBLASLt on Hopper, CUTLASS, PyTorch's
# flash and memory-efficient attention, cuDNN's SDPA, Inductor's Triton kernels, ATen's
# multi-tensor optimizer and elementwise kernels), and the CPU's aten operators.
@pytest.mark.parametrize(
    "name, kind",
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "matmul"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "matmul"),
        ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn", "matmul"),
        ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_64x64_64x4_tn_align8>",
         "matmul"),
        ("triton_tem_fused_addmm_0", "matmul"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>",
         "attention"),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel>",
         "attention"),
        ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80(PyTorchMemEffAttention::AttentionBackwardKernel)",
         "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64", "attention"),
        ("triton_per_fused__to_copy_add_native_layer_norm_0", "fused elementwise (Inductor)"),
        ("triton_red_fused__log_softmax_backward_data_1", "fused elementwise (Inductor)"),
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::"
         "FusedOptimizerTensorListMetadata<4>, at::native::FusedAdamMathFunctor<float, 4>>",
         "optimizer and clipping"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>",
         "copy and fill"),
        ("Memcpy HtoD (Pinned -> Device)", "copy and fill"),
        ("aten::addmm", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
        ("aten::_fused_adamw_", "optimizer and clipping"),
        ("aten::native_layer_norm", "other"),
    ],
)  # fmt: skip
def test_kernels_are_sorted_into_their_kind(gpu_profile, name, kind):
    assert gpu_profile.kind_of(name) == kind


def test_a_step_is_broken_down_by_kind_and_adds_up(gpu_profile):
    """A step of two matmuls of different sizes and one elementwise op: the kinds' shares add up
    to the whole, the larger matmul is the largest entry, and per-step figures are per step."""
    torch.manual_seed(0)
    a, b = torch.randn(384, 384), torch.randn(64, 64)
    out = {}

    def step():
        out["x"] = (a @ a, b @ b, a.exp())

    step()
    profile = gpu_profile.kernel_time(step, torch.device("cpu"), steps=3)
    kinds = {row["kind"]: row for row in profile["kinds"]}
    assert sum(row["share"] for row in profile["kinds"]) == pytest.approx(1.0)
    assert sum(row["ms per step"] for row in profile["kinds"]) == pytest.approx(
        profile["measured_ms_per_step"]
    )
    assert kinds["matmul"]["ms per step"] > 0 and "other" in kinds  # aten::exp
    mm = next(row for row in profile["top"] if row["operator"] == "aten::mm")
    assert mm["calls per step"] == 2  # two matmuls a step, over three profiled steps
    assert profile["measured_ms_per_step"] <= profile["wall_ms_per_step"] * 1.05
    assert profile["device_busy"] is None  # a CUDA-only figure
