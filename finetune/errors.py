"""Moved to ``common.cli`` (one input-error type for every command); kept only for the modules that still import
it from here (train.py, base_models.py, hub.py, dev.py, demo/checkpoints.py): import ``common.cli`` instead."""

from common.cli import UserError

__all__ = ["UserError"]
