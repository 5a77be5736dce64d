"""The optimizers: AdamW (weight decay only where it regularises: matrices and embeddings, not
biases or norms), or Muon for the hidden matrices with AdamW for everything else.

Muon (`torch.optim.Muon`) orthogonalises each matrix's momentum, so every direction of the update
moves at a similar rate; it is defined for 2-D hidden weights only. Embeddings (and the tied
head), LayerNorms and biases stay with AdamW. Both run as one `MuonAdamW`, so the training loop
sees a single optimizer: one LR schedule (each group scaled from its own peak), one grad scaler,
one checkpoint entry holding both states.

torch runs Muon's Newton-Schulz iteration in bf16, which only pays where bf16 matmuls are native;
`Muon` below runs it in fp32 elsewhere (on an AVX2-only CPU it took 36% of the quickstart's time).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from gpt124m.device import native_bf16
from gpt124m.train.config import OPTIMIZERS

FUSED_DEVICES = ("cuda", "cpu")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    device_type: str = "cpu",
    params: list[nn.Parameter] | None = None,
) -> torch.optim.AdamW:
    """The fused kernel on CUDA and CPU; the default foreach path elsewhere (e.g. MPS).

    On CPU the fused step is about 5x faster than foreach for the 124M model (0.07 s vs 0.40 s
    on two cores), 5-8% of a whole training step. `params` restricts it to some of the
    model's trainable parameters (the rest belong to another optimizer).
    """
    groups = param_groups(model, weight_decay)
    if params is not None:
        chosen = {id(p) for p in params}
        groups = [{**g, "params": [p for p in g["params"] if id(p) in chosen]} for g in groups]
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: nothing for the optimizer to update")
    fused = (
        device_type in FUSED_DEVICES and "fused" in inspect.signature(torch.optim.AdamW).parameters
    )
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **extra)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Trainable 2-D weights other than embeddings and the output head: Muon's parameters."""
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad
        and p.dim() == 2
        and id(p) not in embeddings
        and "lm_head" not in name.split(".")
    ]


def orthogonalise(
    m: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype
) -> torch.Tensor:
    """`torch.optim.Muon`'s quintic Newton-Schulz iteration on the matrix `m`, in `dtype`: the
    singular values of the result land in about [0.5, 1.5], whatever they were."""
    a, b, c = coefficients
    tall = m.size(0) > m.size(1)
    x = m.to(dtype).T if tall else m.to(dtype)
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1; never in place: `m` may be the state
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _lr_shape_factor(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's per-matrix LR factor, as `torch.optim.Muon` chooses it."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


# torch < 2.9 has no Muon; TrainConfig refuses --optimizer muon there, and this module still imports
_TorchMuon = getattr(torch.optim, "Muon", torch.optim.Optimizer)


class Muon(_TorchMuon):
    """`torch.optim.Muon` whose Newton-Schulz iteration runs in `ns_dtype`. torch's own step
    (bf16) where that is bf16; otherwise the same algorithm here, on torch's parameter groups and
    state (so checkpoints move between the two). fp32 is for hardware without native bf16, where
    torch emulates bf16 matmuls many times slower than fp32; it is closer to the exact
    orthogonalisation, not further."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step(self.ns_dtype)
        return loss

    @torch.no_grad()
    def _step(self, dtype: torch.dtype) -> None:
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype
                )
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * _lr_shape_factor(group["adjust_lr_fn"], p.shape))


class MuonAdamW:
    """Muon on the hidden matrices and AdamW on the rest, stepped as one optimizer.

    `param_groups` lists both optimizers' groups; Muon's carry `lr_scale` (its peak LR over
    `--max-lr`), which `set_lr` applies, so one schedule drives both. AdamW may be absent (when
    only hidden matrices train, e.g. LoRA adapters).
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW | None) -> None:
        self.muon, self.adamw = muon, adamw
        self._parts = {"muon": muon, **({"adamw": adamw} if adamw is not None else {})}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for part in self._parts.values() for g in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self._parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self._parts.values():
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self._parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self._parts):
            raise ValueError(
                "the checkpoint's optimizer state does not match --optimizer muon: resume with "
                "the --optimizer the run was started with"
            )
        for name, part in self._parts.items():
            part.load_state_dict(state[name])


def build_optimizer(model: nn.Module, cfg, *, device_type: str = "cpu"):
    """`cfg.optimizer`'s optimizer over `model`'s trainable parameters (`cfg`: a TrainConfig)."""
    adamw = dict(
        lr=cfg.max_lr,
        weight_decay=cfg.weight_decay,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        device_type=device_type,
    )
    if cfg.optimizer == "adamw":
        return build_adamw(model, **adamw)
    if cfg.optimizer != "muon":
        raise ValueError(f"--optimizer {cfg.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
    matrices = hidden_matrices(model)
    if not matrices:
        raise ValueError("--optimizer muon: the model has no trainable hidden matrices")
    taken = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    native = native_bf16(torch.device(device_type))
    muon = Muon(
        matrices,
        ns_dtype=torch.bfloat16 if native else torch.float32,
        lr=cfg.muon_lr,
        weight_decay=cfg.muon_weight_decay,
        momentum=cfg.muon_momentum,
        nesterov=True,
    )
    for group in muon.param_groups:
        group["lr_scale"] = cfg.muon_lr / cfg.max_lr if cfg.max_lr > 0 else 0.0
    return MuonAdamW(muon, build_adamw(model, params=rest, **adamw) if rest else None)


def load_optimizer_state(optimizer, state: dict[str, Any], load=None) -> None:
    """Restore a checkpoint's optimizer state (`load(state)`, by default the optimizer's own
    `load_state_dict`); a state of the other --optimizer is an error.

    The checkpoint gives the state (moments, step counts); this run's flags keep the settings
    (weight decay, betas, eps, momentum, Muon's LR scale, fused or not). torch's
    `load_state_dict` would take the checkpoint's settings too, silently overriding flags given
    at resume. With the flags of the first run, the two are the same."""
    if not isinstance(optimizer, MuonAdamW) and "muon" in state:
        raise ValueError(
            "the checkpoint was trained with --optimizer muon: resume with --optimizer muon"
        )
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    (load or optimizer.load_state_dict)(state)
    for group, ours in zip(optimizer.param_groups, settings, strict=True):
        group.update(ours)


def set_lr(optimizer, lr: float) -> None:
    """The schedule's LR for this step: `lr` itself for AdamW groups, scaled for Muon's."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
