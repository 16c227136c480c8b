"""Inference: any subset of a subject's modalities in, every modality out (`mmhvae predict`)."""
