"""One walk from Ray's wrapped errors to the hybrid-ray error a user reads (train's failure line, a trial's status)."""

from types import SimpleNamespace

from ray.exceptions import RayTaskError

from hybrid_ray.errors import DataError, SpecError, root_cause
from hybrid_ray.sweep.status import error_line


def test_the_error_under_rays_dual_class_is_the_one_reported():
    ours = SpecError("model.head_dim must be > 0")
    dual = RayTaskError("train_fn", "Traceback (most recent call last):\n  ...", ours).as_instanceof_cause()
    assert isinstance(dual, SpecError) and isinstance(dual, RayTaskError)  # what Ray raises on the driver
    assert root_cause(dual) is ours
    assert error_line(dual) == "model.head_dim must be > 0"


def test_worker_failures_and_cause_chains_are_searched():
    inner = DataError("shard 3 is corrupt")
    wrapped = RuntimeError("worker died")
    wrapped.__cause__ = inner
    failed = SimpleNamespace(worker_failures={0: RuntimeError("other"), 1: wrapped})
    assert root_cause(failed) is inner


def test_without_a_hybrid_ray_error_the_first_failure_and_the_last_traceback_line_stand():
    error = RuntimeError("Traceback (most recent call last):\n  File x\nValueError: boom")
    assert root_cause(error) is error
    assert error_line(error) == "ValueError: boom"
    assert error_line(None) is None
