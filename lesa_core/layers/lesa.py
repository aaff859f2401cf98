"""LESA: Locally Enhanced Self-Attention (Yang et al., arXiv 2107.05637).

``out = local + fusion(local, context)``: the local term is a grouped conv (:mod:`.local_term`), the
context term global multi-head attention with relative positions (:mod:`.context_term`), and the
fusion a dynamic gate (:mod:`.fusion`). A stride > 1 average-pools after the fusion, as officially.
The layer can record how much each term contributes (mean |local| and mean |weighted context|).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .context_term import POS_EMBEDS, SIM_NORMS, ContextTerm
from .fusion import FUSION_MODES, FusionGate, fuse
from .local_term import LocalTerm


@dataclass(frozen=True)
class TermContribution:
    """Mean absolute value of each term as it enters the output, over the last recorded batch."""

    local: float
    context: float

    @property
    def context_share(self) -> float:
        """context / (local + context): 0 when the local term does all the work, 1 for pure attention."""
        total = self.local + self.context
        return self.context / total if total > 0 else 0.0


def _check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"LESA option {option}={value!r} is not allowed; choose one of {', '.join(allowed)}")


class LesaAttention(nn.Module):
    """The LESA layer, a drop-in for a kxk conv in a bottleneck block.

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``).
        stride: spatial stride, applied by average pooling after the fusion.
        num_heads: attention heads, also the groups of the local conv.
        qk_ratio: q/k width per head relative to the value width.
        unary_kernel: odd kernel size of the local term.
        unary_dilation: dilation of the local term.
        pos_embed: ``rel2d`` (any size) or ``flat1d`` (official classification, fixed ``feat_size``).
        sim_norm: ``bn`` (official BN on the logits) or ``scaled`` (1/sqrt(d), fused attention).
        fusion: ``gate`` (official), ``add``, ``gate_both`` or ``none`` (context only, the SA baseline).
        fusion_shrink: the fusion MLP's hidden width is 2C / fusion_shrink.
        feat_size: input feature size at construction (see :class:`ContextTerm`).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        stride: int = 1,
        num_heads: int = 8,
        qk_ratio: float = 0.5,
        unary_kernel: int = 3,
        unary_dilation: int = 1,
        pos_embed: str = "rel2d",
        sim_norm: str = "bn",
        fusion: str = "gate",
        fusion_shrink: float = 2,
        feat_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        dim_out = dim_out or dim
        _check_choice("fusion", fusion, FUSION_MODES)
        _check_choice("pos_embed", pos_embed, POS_EMBEDS)
        _check_choice("sim_norm", sim_norm, SIM_NORMS)
        if num_heads < 1 or dim % num_heads or dim_out % num_heads:
            raise ValueError(
                f"LESA option num_heads={num_heads} must divide the channels (in {dim}, out {dim_out})"
            )
        if unary_kernel < 1 or unary_kernel % 2 == 0:
            raise ValueError(f"LESA option unary_kernel={unary_kernel} must be an odd positive integer")
        if unary_dilation < 1:
            raise ValueError(f"LESA option unary_dilation={unary_dilation} must be >= 1")
        if fusion_shrink <= 0:
            raise ValueError(f"LESA option fusion_shrink={fusion_shrink} must be > 0")
        if stride < 1:
            raise ValueError(f"LESA option stride={stride} must be >= 1")
        self.fusion = fusion
        self.local_term = None
        if fusion != "none":
            self.local_term = LocalTerm(
                dim, dim_out, num_heads=num_heads, kernel_size=unary_kernel, dilation=unary_dilation
            )
        self.context_term = ContextTerm(
            dim, dim_out, num_heads=num_heads, qk_ratio=qk_ratio, pos_embed=pos_embed,
            sim_norm=sim_norm, feat_size=feat_size,
        )
        self.fusion_gate = None
        if fusion in ("gate", "gate_both"):
            self.fusion_gate = FusionGate(dim_out, shrink=fusion_shrink, gates=2 if fusion == "gate_both" else 1)
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.track_contribution = False
        self.contribution: TermContribution | None = None
        # no self.reset_parameters() here: each term has just run its own, and this layer owns no parameters

    def reset_parameters(self) -> None:
        """Re-initialises every term (local, context, fusion gate) as at construction."""
        for term in (self.local_term, self.context_term, self.fusion_gate):
            if term is not None:
                term.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H / stride, W / stride)."""
        local = self.local_term(x) if self.local_term is not None else None
        context = self.context_term(x)
        local, context = fuse(self.fusion, local, context, self.fusion_gate)
        if self.track_contribution:
            with torch.no_grad():
                local_mean = local.abs().mean().item() if local is not None else 0.0
                self.contribution = TermContribution(local_mean, context.abs().mean().item())
        out = context if local is None else local + context
        return self.pool(out)


def record_contributions(model: nn.Module, enabled: bool = True) -> None:
    """Turns contribution recording on (or off) in every LESA layer of ``model``."""
    for module in model.modules():
        if isinstance(module, LesaAttention):
            module.track_contribution = enabled
            if not enabled:
                module.contribution = None


def collect_contributions(model: nn.Module) -> dict[str, TermContribution]:
    """{layer name: contribution} from each LESA layer's last forward while recording."""
    return {
        name: module.contribution
        for name, module in model.named_modules()
        if isinstance(module, LesaAttention) and module.contribution is not None
    }
