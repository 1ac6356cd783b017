"""A program source that answers from a function: for sampler and consumer tests without a
kernel (a pass that fails or changes on demand)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from otel_bpf.kernel.source import ReadResult, SamplingPath, SourceOptions
from otel_bpf.records import ProgramRecord


class PassLike(Protocol):
    @property
    def records(self) -> Sequence[ProgramRecord]: ...

    @property
    def errors(self) -> Sequence[str]: ...


class CallSource:
    """Each :meth:`read` calls ``passes``; the options of every read are kept in ``asked``."""

    def __init__(
        self,
        passes: Callable[[], PassLike],
        path: SamplingPath = "syscall",
        options: SourceOptions | None = None,
    ) -> None:
        self._passes = passes
        self.path: SamplingPath = path
        self.options = options or SourceOptions()
        self.asked: list[SourceOptions] = []
        self.closed = False

    def read(self, options: SourceOptions | None = None) -> ReadResult:
        self.asked.append(options or self.options)
        result = self._passes()
        return ReadResult(list(result.records), list(result.errors))

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> CallSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
