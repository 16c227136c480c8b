"""Training (Algorithm 1): the objective of Eq. 19 and the GAN terms, the slice data, folds, the memory of real
images, the Lightning modules and the `mmhvae train` job."""
