"""Trained sparse models for the people who use them: file formats, and export of a run's checkpoint."""
