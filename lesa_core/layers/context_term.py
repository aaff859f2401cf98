"""The context (binary) term of LESA: multi-head self-attention over all H*W positions.

q, k and v come from one 1x1 projection + BN; per head q and k have ``qk_ratio * C / heads`` channels and
v has ``C / heads``. Two position encodings:

* ``flat1d`` (official classification code): one learned table over the *flattened* index offset
  i - j, used three ways: q.r_q, k.r_k on the logits and A.r_v on the output. It fixes H*W.
* ``rel2d`` (official detection code, extended): q.r with separate height and width tables. Tables are
  sliced, or linearly resampled when the map is larger than at construction, so any H, W works.

Two similarity normalisations:

* ``bn`` (official): every logit term (q.k, q.r[, k.r]) gets its own BatchNorm over heads, then they are
  summed; the whole L x L matrix is materialised.
* ``scaled``: q.k / sqrt(d) plus the position logits. With ``rel2d`` the position logits are folded into
  augmented q and k vectors, so ``scaled_dot_product_attention`` runs without an L x L bias and fused
  kernels apply. ``flat1d`` needs the attention matrix for its A.r_v term and computes it explicitly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

POS_EMBEDS = ("rel2d", "flat1d")
SIM_NORMS = ("bn", "scaled")


def to_2tuple_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """An int or (H, W) -> (H, W)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@register_notrace_function  # branches on the map size: one FX node, not traced through
def resize_rel_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Fits a (2S - 1, d) table of relative offsets -S+1..S-1 to (2N - 1, d) for a map of size N.

    The centre rows are sliced when N <= S; otherwise the table is linearly resampled.
    """
    rows = 2 * length - 1
    if rows <= table.shape[0]:
        start = (table.shape[0] - rows) // 2
        return table[start:start + rows]
    resized = F.interpolate(table.t().unsqueeze(0), size=rows, mode="linear", align_corners=True)
    return resized.squeeze(0).t()


@register_notrace_function  # compares the map size: one FX node, so the check stays in traced graphs
def check_flat1d_size(x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
    """Returns the (B, C, H, W) map ``x`` unchanged if (H, W) is the size a ``flat1d`` table was built for."""
    height, width = x.shape[-2:]
    if (height, width) != feat_size:
        raise ValueError(
            f"pos_embed='flat1d' was built for a {feat_size[0]}x{feat_size[1]} feature map "
            f"and got {height}x{width}; build the model for this input size or use pos_embed='rel2d'"
        )
    return x


def rel2d_logits(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative position logits of each query against every key row and column.

    Args:
        q: (B, heads, H, W, d) queries.
        rel_h: (2H - 1, d) height table, offsets y_k - y_q from -H+1.
        rel_w: (2W - 1, d) width table.

    Returns:
        (B, heads, H, W, H) logits against each key row y_k, and (B, heads, H, W, W) against each
        key column x_k.
    """
    height, width = q.shape[2], q.shape[3]
    # [y_q, y_k] -> offset index y_k - y_q + H - 1
    offsets_h = torch.arange(height, device=q.device)
    offsets_h = offsets_h[None, :] - offsets_h[:, None] + height - 1
    offsets_w = torch.arange(width, device=q.device)
    offsets_w = offsets_w[None, :] - offsets_w[:, None] + width - 1
    table_h = rel_h[offsets_h]  # H_q, H_k, d
    table_w = rel_w[offsets_w]  # W_q, W_k, d
    logits_h = torch.einsum("bnyxd,ykd->bnyxk", q, table_h)  # B, heads, H, W, H_k
    logits_w = torch.einsum("bnyxd,xkd->bnyxk", q, table_w)  # B, heads, H, W, W_k
    return logits_h, logits_w


class ContextTerm(nn.Module):
    """Multi-head self-attention with relative positions over a (B, C, H, W) map.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C, divisible by ``num_heads``.
        num_heads: attention heads.
        qk_ratio: q/k width per head as a fraction of the value width C / heads.
        pos_embed: ``rel2d`` or ``flat1d``.
        sim_norm: ``bn`` or ``scaled``.
        feat_size: feature map size at construction: required by ``flat1d`` (the only size it accepts);
            for ``rel2d`` it sets the extent of the learned tables (other sizes are resampled).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_heads: int = 8,
        qk_ratio: float = 0.5,
        pos_embed: str = "rel2d",
        sim_norm: str = "bn",
        feat_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed={pos_embed!r} is not one of {POS_EMBEDS}")
        if sim_norm not in SIM_NORMS:
            raise ValueError(f"sim_norm={sim_norm!r} is not one of {SIM_NORMS}")
        if num_heads < 1 or out_channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the {out_channels} channels")
        if qk_ratio <= 0:
            raise ValueError(f"qk_ratio={qk_ratio} must be > 0")
        if pos_embed == "flat1d" and feat_size is None:
            raise ValueError("pos_embed='flat1d' needs feat_size: it learns one table for a fixed H*W")
        self.num_heads = num_heads
        self.out_channels = out_channels
        self.v_dim = out_channels // num_heads
        self.qk_dim = max(1, round(self.v_dim * qk_ratio))
        self.pos_embed = pos_embed
        self.sim_norm = sim_norm
        self.feat_size = to_2tuple_size(feat_size if feat_size is not None else 16)
        qkv_channels = num_heads * (2 * self.qk_dim + self.v_dim)
        self.qkv = nn.Conv2d(in_channels, qkv_channels, 1, bias=False)
        self.qkv_norm = nn.BatchNorm2d(qkv_channels)

        if pos_embed == "flat1d":
            length = self.feat_size[0] * self.feat_size[1]
            self.rel_flat = nn.Parameter(torch.empty(2 * self.qk_dim + self.v_dim, 2 * length - 1))
            index = torch.arange(length)
            # [i, j] -> offset index i - j + L - 1 (the official layout)
            flat_index = (index[:, None] - index[None, :] + length - 1).flatten()
            self.register_buffer("flat_index", flat_index, persistent=False)
            logit_terms, output_terms = 3, 2  # q.k, q.r_q, k.r_k | A.v, A.r_v
        else:
            self.rel_h = nn.Parameter(torch.empty(2 * self.feat_size[0] - 1, self.qk_dim))
            self.rel_w = nn.Parameter(torch.empty(2 * self.feat_size[1] - 1, self.qk_dim))
            logit_terms, output_terms = 2, 1  # q.k, q.r | A.v
        self.output_terms = output_terms
        self.sim_bn = nn.BatchNorm2d(logit_terms * num_heads) if sim_norm == "bn" else None
        self.out_norm = nn.BatchNorm2d(output_terms * out_channels)
        self.in_channels = in_channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: q/k/v projection N(0, 1 / C_in), position tables N(0, 1 / d); BNs to identity."""
        nn.init.normal_(self.qkv.weight, 0.0, math.sqrt(1.0 / self.in_channels))
        if self.pos_embed == "flat1d":
            nn.init.normal_(self.rel_flat, 0.0, math.sqrt(1.0 / self.v_dim))
        else:
            nn.init.normal_(self.rel_h, 0.0, self.qk_dim ** -0.5)
            nn.init.normal_(self.rel_w, 0.0, self.qk_dim ** -0.5)
        for norm in (self.qkv_norm, self.sim_bn, self.out_norm):
            if norm is not None:
                norm.reset_parameters()

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) -> q, k (B, heads, d_qk, L) and v (B, heads, d_v, L)."""
        batch, _, height, width = x.shape
        qkv = self.qkv_norm(self.qkv(x))
        qkv = qkv.reshape(batch, self.num_heads, 2 * self.qk_dim + self.v_dim, height * width)
        return qkv.split([self.qk_dim, self.qk_dim, self.v_dim], dim=2)

    def _normalise_output(self, terms: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """Output terms, each (B, heads, d_v, L) -> BN per term and channel, summed -> (B, C, H, W)."""
        batch = terms[0].shape[0]
        # channel c of term t sits at 2c + t, as in the official BatchNorm1d over [A.v, A.r_v]
        stacked = torch.stack(terms, dim=3).reshape(batch, self.output_terms * self.out_channels, height, width)
        out = self.out_norm(stacked).reshape(batch, self.out_channels, self.output_terms, height, width)
        return out.sum(dim=2)

    def _sum_logits(self, terms: list[torch.Tensor]) -> torch.Tensor:
        """Logit terms, each (B, heads, L, L) -> official BN per term and head, summed; or scaled sum."""
        if self.sim_bn is None:
            terms[0] = terms[0] * self.qk_dim ** -0.5
            return sum(terms)
        batch, heads, length, _ = terms[0].shape
        normed = self.sim_bn(torch.cat(terms, dim=1))  # B, terms * heads, L, L
        return normed.view(batch, len(terms), heads, length, length).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, H, W)."""
        if self.pos_embed == "flat1d":
            return self._forward_flat1d(check_flat1d_size(x, self.feat_size))
        if self.sim_norm == "scaled":
            return self._forward_rel2d_fused(x)
        return self._forward_rel2d_explicit(x)

    def _forward_flat1d(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        length = height * width
        q, k, v = self._project(x)
        table = self.rel_flat[:, self.flat_index].view(-1, length, length)  # d_q + d_k + d_v, L_q, L_k
        table_q, table_k, table_v = table.split([self.qk_dim, self.qk_dim, self.v_dim], dim=0)
        qk = torch.einsum("bndi,bndj->bnij", q, k)  # B, heads, L_q, L_k
        qr = torch.einsum("bndi,dij->bnij", q, table_q)
        kr = torch.einsum("bndj,dji->bnij", k, table_k)
        attn = self._sum_logits([qk, qr, kr]).softmax(dim=-1)
        av = torch.einsum("bnij,bndj->bndi", attn, v)  # B, heads, d_v, L
        arv = torch.einsum("bnij,dij->bndi", attn, table_v)
        return self._normalise_output([av, arv], height, width)

    def _rel_tables(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        return resize_rel_table(self.rel_h, height), resize_rel_table(self.rel_w, width)

    def _forward_rel2d_explicit(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        length = height * width
        q, k, v = self._project(x)
        qk = torch.einsum("bndi,bndj->bnij", q, k)  # B, heads, L_q, L_k
        q_grid = q.transpose(2, 3).reshape(batch, self.num_heads, height, width, self.qk_dim)
        logits_h, logits_w = rel2d_logits(q_grid, *self._rel_tables(height, width))
        # B, heads, H_q, W_q, H_k, W_k -> B, heads, L_q, L_k
        qr = (logits_h.unsqueeze(-1) + logits_w.unsqueeze(-2)).reshape(batch, self.num_heads, length, length)
        attn = self._sum_logits([qk, qr]).softmax(dim=-1)
        av = torch.einsum("bnij,bndj->bndi", attn, v)  # B, heads, d_v, L
        return self._normalise_output([av], height, width)

    def _forward_rel2d_fused(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        length = height * width
        q, k, v = self._project(x)
        q, k, v = q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)  # B, heads, L, d
        logits_h, logits_w = rel2d_logits(
            q.reshape(batch, self.num_heads, height, width, self.qk_dim), *self._rel_tables(height, width)
        )
        # q.r_h[y_k - y_q] + q.r_w[x_k - x_q] = [q_pos_h, q_pos_w] . [onehot(y_k), onehot(x_k)], so the
        # position logits ride along as extra q/k channels and no L x L bias is ever built.
        key_rows = torch.arange(height, device=x.device).repeat_interleave(width)
        key_cols = torch.arange(width, device=x.device).repeat(height)
        key_pos = torch.cat([F.one_hot(key_rows, height), F.one_hot(key_cols, width)], dim=-1).to(k.dtype)
        q_aug = torch.cat(
            [q * self.qk_dim ** -0.5,
             logits_h.reshape(batch, self.num_heads, length, height),
             logits_w.reshape(batch, self.num_heads, length, width)],
            dim=-1,
        )  # B, heads, L, d + H + W
        k_aug = torch.cat([k, key_pos.expand(batch, self.num_heads, length, height + width)], dim=-1)
        # zero channels change no dot product and give the fused kernels their 8-aligned head dim
        align = -q_aug.shape[-1] % 8
        q_aug, k_aug = F.pad(q_aug, (0, align)), F.pad(k_aug, (0, align))
        av = F.scaled_dot_product_attention(q_aug, k_aug, v, scale=1.0)  # B, heads, L, d_v
        return self._normalise_output([av.transpose(2, 3)], height, width)
