"""Reading and writing: NIfTI volumes with their full header, the three data layouts, subjects, atomic files.

The first stage of the pipeline; it knows nothing of networks, preprocessing or training."""
