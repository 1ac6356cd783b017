"""How bpftop-otel turns failures into one error line and an exit status."""

from __future__ import annotations

import errno
import sys

import pytest

from otel_bpf.cli import main as cli_main
from otel_bpf.cli.exporters import ExporterError
from otel_bpf.kernel.errors import BpfError, BpfPermissionError

if sys.version_info >= (3, 11):
    group = ExceptionGroup  # noqa: F821
    base_group = BaseExceptionGroup  # noqa: F821
else:  # pragma: no cover - anyio depends on the backport there
    from exceptiongroup import BaseExceptionGroup as base_group
    from exceptiongroup import ExceptionGroup as group


def raising(exc: BaseException) -> int:
    raise exc


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (
            BpfPermissionError(errno.EPERM, "permission denied for X: needs CAP_SYS_ADMIN"),
            77,
            "bpftop-otel: error: permission denied for X: needs CAP_SYS_ADMIN; bpftop-otel "
            "needs CAP_SYS_ADMIN and CAP_BPF",
        ),
        (BpfError(errno.EINVAL, "kernel 5.4 lacks BPF_ENABLE_STATS"), 1, "lacks BPF_ENABLE_STATS"),
        (ExporterError("cannot listen on 127.0.0.1:9464"), 1, "cannot listen on"),
        (
            group("in a task group", [ValueError("x"), BpfPermissionError(1, "denied")]),
            77,
            "denied",
        ),
    ],
)
def test_expected_failures_become_one_line(
    exc: BaseException, status: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main._guard(lambda: raising(exc)) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bpftop-otel: error: ")
    assert line in err


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), cli_main._Terminated(), group("g", [cli_main._Terminated()])],
)
def test_interrupts_end_with_status_0(exc: BaseException) -> None:
    assert cli_main._guard(lambda: raising(exc)) == 0


def test_bugs_are_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError):
        cli_main._guard(lambda: 1 // 0)


def test_find_and_only_walk_nested_groups() -> None:
    inner = BpfError(1, "inner")
    nested = group("outer", [group("mid", [ValueError("v"), inner])])
    assert cli_main._find(nested, BpfError) is inner
    assert cli_main._find(nested, KeyError) is None
    assert cli_main._only(base_group("g", [KeyboardInterrupt()]), (KeyboardInterrupt,))
    assert not cli_main._only(nested, (ValueError,))
