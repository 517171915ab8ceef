"""Training on Ray Train: the per-worker loop and the driver that launches it."""

from hybrid_ray.train.launch import TrainOutcome, train

__all__ = ["TrainOutcome", "train"]
