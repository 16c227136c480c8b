"""Evaluation (Section 4.4.1): metrics inside a mask, scoring of every input subset x target, statistics over
subjects, Markdown tables and figures (`mmhvae evaluate`)."""
