"""Masks and the criteria that choose them: which weights are pruned, when, and how the mask holds."""
