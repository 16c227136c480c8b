"""The tissues of the phantom, by name: the healthy ones of the template, the tumour's, and which are brain."""

from __future__ import annotations

# Tissue fraction maps, in the order the phantom stacks them. Fractions of a voxel sum to at most 1; the
# rest is background (air outside the head, or the saline that couples the ultrasound probe).
HEALTHY_TISSUES: tuple[str, ...] = (
    "csf_sulcal", "csf_ventricle", "gm", "wm", "choroid", "falx", "bone", "scalp",
)
TUMOUR_TISSUES: tuple[str, ...] = ("necrosis", "enhancing", "nonenhancing", "oedema")
ALL_TISSUES: tuple[str, ...] = HEALTHY_TISSUES + TUMOUR_TISSUES
BRAIN_TISSUES: tuple[str, ...] = ("csf_sulcal", "csf_ventricle", "gm", "wm", "choroid", "falx")
