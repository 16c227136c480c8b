"""The baselines of Table I that are not MMHVAE configurations: zero-imputation generators (MM-GAN, ResViT)
and the Brownian-bridge diffusion M2DN, behind the same encode/decode interface as MMHVAE."""
