"""Dynamic fusion of the local and context terms of LESA.

The official gate looks at both terms and decides, per channel and position, how much of the context
term to add to the local one: concat -> ReLU -> 1x1 (2C -> 2C/shrink) -> BN -> ReLU -> 1x1 (-> C) -> BN
-> sigmoid, and ``out = local + gate * context``. The variants here make the design searchable.
"""

from __future__ import annotations

import torch
from torch import nn

from .weight_init import init_conv_bn_

FUSION_MODES = ("gate", "add", "gate_both", "none")


class FusionGate(nn.Module):
    """Maps (local, context) to ``gates`` sigmoid gates of C channels each.

    Args:
        channels: channels C of each term.
        shrink: the hidden width is 2C / shrink.
        gates: 1 for the official context gate; 2 for one gate per term (``gate_both``).
    """

    def __init__(self, channels: int, *, shrink: float = 2, gates: int = 1) -> None:
        super().__init__()
        hidden = int(2 * channels / shrink)
        if hidden < 1:
            raise ValueError(f"fusion_shrink={shrink} leaves no hidden channels for {channels} channels")
        self.gates = gates
        self.reduce = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(2 * channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
        )
        self.expand = nn.Sequential(
            nn.Conv2d(hidden, gates * channels, 1, bias=False),
            nn.BatchNorm2d(gates * channels),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He normal (fan_out) convs and identity BNs, as the official code initialises them."""
        init_conv_bn_(self.modules())

    def forward(self, local: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Two (B, C, H, W) terms -> (B, gates * C, H, W) gate values in (0, 1)."""
        return torch.sigmoid(self.expand(self.reduce(torch.cat([local, context], dim=1))))


def fuse(
    mode: str, local: torch.Tensor | None, context: torch.Tensor, gate: FusionGate | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Weights the two terms as ``mode`` says; returns (weighted local, weighted context).

    ``gate``: out = local + g * context (official). ``add``: local + context. ``gate_both``:
    g_l * local + g_c * context. ``none``: context alone (the SA baseline; ``local`` is None).
    """
    if mode == "none":
        return None, context
    if mode == "add":
        return local, context
    gates = gate(local, context)
    if mode == "gate":
        return local, gates * context
    gate_local, gate_context = gates.chunk(2, dim=1)
    return gate_local * local, gate_context * context
