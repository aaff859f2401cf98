"""LESA layers: local term, context term, fusion gate and the LESA layer."""

from .context_term import POS_EMBEDS, SIM_NORMS, ContextTerm
from .fusion import FUSION_MODES, FusionGate
from .lesa import LesaAttention, TermContribution, collect_contributions, record_contributions
from .local_term import LocalTerm
from .weight_init import init_conv_bn_

__all__ = [
    "FUSION_MODES",
    "POS_EMBEDS",
    "SIM_NORMS",
    "ContextTerm",
    "FusionGate",
    "LesaAttention",
    "LocalTerm",
    "TermContribution",
    "collect_contributions",
    "init_conv_bn_",
    "record_contributions",
]
