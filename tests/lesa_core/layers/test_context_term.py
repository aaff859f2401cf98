import pytest
import torch

from lesa_core.layers import ContextTerm
from lesa_core.layers.context_term import rel2d_logits, resize_rel_table


def test_resize_rel_table_slices_the_centre_for_smaller_maps():
    table = torch.arange(15, dtype=torch.float32)[:, None]  # offsets -7..7
    assert resize_rel_table(table, 3).squeeze(1).tolist() == [5, 6, 7, 8, 9]  # offsets -2..2


def test_resize_rel_table_resamples_for_larger_maps_keeping_the_ends():
    table = torch.randn(7, 4)
    resized = resize_rel_table(table, 10)
    assert resized.shape == (19, 4)
    torch.testing.assert_close(resized[0], table[0])
    torch.testing.assert_close(resized[-1], table[-1])
    torch.testing.assert_close(resized[9], table[3])  # offset 0 stays offset 0


def test_rel2d_logits_match_a_direct_sum_over_offsets():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 3, 4, 5)  # B, heads, H, W, d
    rel_h, rel_w = torch.randn(5, 5), torch.randn(7, 5)
    logits_h, logits_w = rel2d_logits(q, rel_h, rel_w)
    for y in range(3):
        for x in range(4):
            for yk in range(3):
                expected = q[0, 1, y, x] @ rel_h[yk - y + 2]
                torch.testing.assert_close(logits_h[0, 1, y, x, yk], expected)
            for xk in range(4):
                expected = q[0, 1, y, x] @ rel_w[xk - x + 3]
                torch.testing.assert_close(logits_w[0, 1, y, x, xk], expected)


def test_fused_attention_equals_the_explicit_scaled_form():
    """The augmented q/k trick must give exactly softmax(q.k / sqrt(d) + q.r_h + q.r_w) v."""
    torch.manual_seed(0)
    term = ContextTerm(32, 32, num_heads=4, pos_embed="rel2d", sim_norm="scaled", feat_size=6).eval()
    x = torch.randn(2, 32, 7, 9)
    fused = term(x)
    assert term.sim_bn is None  # so the explicit path below uses the same 1/sqrt(d) scaling
    explicit = term._forward_rel2d_explicit(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pos_embed", ["rel2d", "flat1d"])
def test_qkv_widths_follow_heads_and_qk_ratio(pos_embed):
    term = ContextTerm(64, 64, num_heads=8, qk_ratio=0.5, pos_embed=pos_embed, feat_size=4)
    assert (term.qk_dim, term.v_dim) == (4, 8)
    assert term.qkv.out_channels == 8 * (4 + 4 + 8)
    wide = ContextTerm(64, 64, num_heads=8, qk_ratio=1.0, pos_embed=pos_embed, feat_size=4)
    assert wide.qk_dim == 8


def test_flat1d_needs_a_feature_size():
    with pytest.raises(ValueError, match=r"flat1d.*feat_size"):
        ContextTerm(32, 32, num_heads=4, pos_embed="flat1d")
