"""bench/gpu_profile.py: the kernel-time breakdown the GPU run records for each compiled step."""

import pytest
import torch

from .conftest import bench_module


@pytest.fixture(scope="module")
def gpu_profile():
    return bench_module("gpu_profile")


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
        ("triton_poi_fused__scaled_dot_product_flash_attention_transpose_3",
         "fused elementwise (Inductor)"),
        ("triton_tem_fused_addmm_gelu_5", "matmul"),
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


def test_on_cuda_only_kernels_count_once(gpu_profile):
    """What torch.profiler reports as CUDA events on a GPU: the kernels, and also labelled regions
    spanning them (a compiled graph's call, `Optimizer.step`) as user annotations; the operators
    that launched the kernels are CPU events carrying the same device time. Only the kernels count.
    (Events built here: the CPU box records no CUDA ones.)"""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(key, device_type, us, annotation=False):
        return SimpleNamespace(key=key, count=2, device_type=device_type,
                               self_device_time_total=us, self_cpu_time_total=5.0,
                               is_user_annotation=annotation)  # fmt: skip

    averages = [
        event("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", DeviceType.CUDA, 700.0),
        event("triton_per_fused_native_layer_norm_0", DeviceType.CUDA, 300.0),
        event("## Call CompiledFxGraph fabc ##", DeviceType.CUDA, 1000.0, annotation=True),
        event("Optimizer.step#AdamW.step", DeviceType.CUDA, 90.0, annotation=True),
        event("aten::mm", DeviceType.CPU, 700.0),  # the launching operator
        event("Memset (Device)", DeviceType.CUDA, 0.0),  # nothing measured: left out
    ]
    rows = gpu_profile.timed_events(averages, True)
    assert rows == [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", 2, 700.0),
        ("triton_per_fused_native_layer_norm_0", 2, 300.0),
    ]
    # on the CPU every operator's own time, labelled regions included
    assert len(gpu_profile.timed_events(averages, False)) == len(averages)
