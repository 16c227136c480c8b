"""Downstream tasks of the paper (Sections 4.4.3-4.4.4): ultrasound segmentation and MR-ultrasound registration."""
