"""The networks: MMHVAE (Sections 3-4), its Gaussian maths, blocks and critics, the authors' released network,
the baselines of Section 4.3, and the registry that builds any of them from a configuration dict.

Nothing here imports data handling, run configuration or training: a network is built from plain values."""
