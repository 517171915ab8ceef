"""Errors a user can fix: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HybridRayError(Exception):
    """Base class of every error caused by input, configuration or environment rather than a bug."""

    exit_code = 1


class Interrupted(HybridRayError):
    """Ctrl-C or SIGTERM: the run or sweep stopped and can be resumed by relaunching it."""

    exit_code = 130


class SpecError(HybridRayError, ValueError):
    """A run specification (variant, preset, field value, YAML file) is invalid."""

    exit_code = 2


class DataError(HybridRayError):
    """A data source, tokenizer or token shard cannot be read or is unusable."""


class CheckpointError(HybridRayError):
    """A checkpoint is missing, incomplete or corrupt."""


class ClusterError(HybridRayError):
    """The Ray cluster is unreachable or lacks the resources a run asks for."""


class EnvironmentProblem(HybridRayError):
    """The installed software cannot do what was asked (e.g. train FLA's kernels on this GPU)."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def root_cause(error: BaseException) -> BaseException:
    """The hybrid-ray error inside Ray's wrappers (TrainingFailedError -> worker failure -> cause chain), else the
    first worker failure or the error itself.

    Ray re-raises a remote error as a class that is both `RayTaskError` and the original class, whose message starts
    with Ray's traceback header: it is skipped for the original error under it.
    """
    try:
        from ray.exceptions import RayTaskError
    except ImportError:  # pragma: no cover - Ray is a dependency
        RayTaskError = ()  # noqa: N806
    failures = getattr(error, "worker_failures", None)
    candidates = list(failures.values()) if failures else [error]
    for candidate in candidates:
        seen: BaseException | None = candidate
        while seen is not None:
            if isinstance(seen, HybridRayError) and not isinstance(seen, RayTaskError):
                return seen
            seen = getattr(seen, "cause", None) or seen.__cause__
    return candidates[0]
