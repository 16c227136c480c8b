"""From a subject on disk to network inputs and harmonised targets (Section 4.4.1).

Intensity normalisation and target harmonisation (`intensity`), masks of the field of view, the foreground and
the white matter (`masks`), the model grid (`grid`), and the preparation of a subject (`prepare`); the authors'
own input normalisation (`authors`) is the one a model's preprocessing names instead of ours for their network."""
