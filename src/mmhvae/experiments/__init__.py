"""Experiments that combine training, inference and evaluation: the studies of Tables I-II, the phantom
benchmark page, the analyses of Figs. 4-5, the downstream tasks of Tables III-IV and the demo."""
