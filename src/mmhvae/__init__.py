"""mmhvae: unified cross-modal medical image synthesis with missing data (MMHVAE, Dorent et al., TPAMI 2025)."""

__version__ = "0.1.0"
