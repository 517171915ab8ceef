"""Where an inference command's start-up goes (`generate`, `eval`): one clock, a phase at a time, one line to print.

    startup = Startup()                     # the CLI passes started=command_started(): its own start
    with startup.phase("weights read"):
        ...
    print(startup.line())                   # start-up: imports 2.14 s, CUDA start 310 ms, ...

No torch here: the CLI imports this module before anything heavy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# every phase, in the order a command goes through them; a phase that does not apply (no GPU, the twin) stays at 0
PHASES = ("imports", "CUDA start", "kernel cache", "tokenizer", "model build", "weights read", "to device",
          "decoder setup", "graph capture")

_command: list[float] = []  # when the running command was entered (cli.main)


def mark_command_start() -> None:
    _command[:] = [time.perf_counter()]


def command_started() -> float | None:
    """When cli.main was entered in this process (None outside the CLI)."""
    return _command[0] if _command else None


def seconds_text(seconds: float, decimals: int = 1) -> str:
    """A duration to print: milliseconds below a second, else seconds."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.{decimals}f} s"


class Startup:
    """Seconds per start-up phase, from `started` (default: now). What ran before this object was made (the CLI's
    own imports of torch and the library) counts as imports."""

    def __init__(self, started: float | None = None) -> None:
        now = time.perf_counter()
        self.started = now if started is None else started
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["imports"] = now - self.started
        self.loaded_at: float | None = None  # when the model was ready (loading ends)
        self.first_token_at: float | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise KeyError(f"unknown start-up phase {name!r}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def loaded(self) -> None:
        self.loaded_at = time.perf_counter()

    def first_token(self) -> None:
        self.first_token_at = time.perf_counter()

    @property
    def load_s(self) -> float:
        """From the start to the model being ready (0 before it is)."""
        return self.loaded_at - self.started if self.loaded_at is not None else 0.0

    @property
    def first_token_from_start_s(self) -> float | None:
        return self.first_token_at - self.started if self.first_token_at is not None else None

    def to_dict(self) -> dict[str, float | None]:
        return {**{k: round(v, 4) for k, v in self.seconds.items()}, "load_s": round(self.load_s, 4),
                "first_token_from_start_s": self.first_token_from_start_s}

    def line(self) -> str:
        """`start-up: imports 2.14 s, CUDA start 310 ms, ... (model ready N s after the start[, first token M s])`."""
        phases = ", ".join(f"{name} {seconds_text(self.seconds[name], 2)}" for name in PHASES)
        ends = [f"model ready {seconds_text(self.load_s, 2)} after the start"] if self.loaded_at is not None else []
        if self.first_token_at is not None:
            ends.append(f"first token {seconds_text(self.first_token_from_start_s, 2)}")
        return f"start-up: {phases}" + (f" ({', '.join(ends)})" if ends else "")
