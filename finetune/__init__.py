"""Train LIMA's zero-shot and dialogue models from one base: data, recipe, residual dropout, checkpoints."""
