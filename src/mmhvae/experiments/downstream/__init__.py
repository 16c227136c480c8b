"""The downstream tasks of Sections 4.4.3-4.4.4: ultrasound tumour segmentation learnt from synthetic
ultrasound (Table IV) and MR-ultrasound registration through synthetic MR (Table III)."""
