"""The embedded default data: a seeded multimodal brain-tumour phantom (`mmhvae simulate`, docs/phantom.md)."""
