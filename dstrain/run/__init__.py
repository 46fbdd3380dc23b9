"""One training run on a DeepSpeed engine: the loop, its configuration, its folder and its checkpoints."""
