"""lesa_core: Locally Enhanced Self-Attention layers and models (Yang et al., arXiv 2107.05637).

Importing the package registers the LESA models with timm.
"""

from . import layers, models

__version__ = "0.1.0"

__all__ = ["__version__", "layers", "models"]
