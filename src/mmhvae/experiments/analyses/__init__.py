"""Section 6 analyses: latent alignment across input subsets (Fig. 4) and the effect of temperature (Fig. 5)."""
