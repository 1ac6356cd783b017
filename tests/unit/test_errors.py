"""The errno -> exception table and its messages."""

from __future__ import annotations

import errno

import pytest

from otel_bpf.kernel import errors
from otel_bpf.kernel.errors import (
    BpfError,
    BpfNotFoundError,
    BpfPermissionError,
    BpfUnsupportedError,
    error_for,
    unsupported_command,
)


@pytest.mark.parametrize("err", [errno.EPERM, errno.EACCES])
def test_permission_message_names_capabilities(err: int) -> None:
    exc = error_for(err, "BPF_PROG_GET_NEXT_ID")
    assert isinstance(exc, BpfPermissionError) and isinstance(exc, OSError)
    assert exc.errno == err
    assert "CAP_SYS_ADMIN" in str(exc)
    assert "BPF_PROG_GET_NEXT_ID" in str(exc)


def test_permission_for_loading_names_cap_bpf() -> None:
    assert "CAP_BPF" in str(error_for(errno.EPERM, "BPF_PROG_LOAD", "otel_x"))


def test_not_found_unsupported_and_other() -> None:
    assert isinstance(error_for(errno.ENOENT, "BPF_PROG_GET_FD_BY_ID"), BpfNotFoundError)
    assert isinstance(error_for(errno.ENOSYS, "BPF_PROG_LOAD"), BpfUnsupportedError)
    assert isinstance(error_for(errno.EOPNOTSUPP, "BPF_LINK_CREATE"), BpfUnsupportedError)
    assert isinstance(error_for(errors.ENOTSUPP, "BPF_LINK_CREATE"), BpfUnsupportedError)
    other = error_for(errno.E2BIG, "BPF_OBJ_GET_INFO_BY_FD", "prog 3")
    assert type(other) is BpfError
    assert "prog 3" in str(other)


def test_unknown_command_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors.system, "kernel_version", lambda: "5.4")
    exc = unsupported_command("BPF_ENABLE_STATS")
    assert isinstance(exc, BpfUnsupportedError)
    assert str(exc).endswith("kernel 5.4 lacks BPF_ENABLE_STATS, needs >= 5.8")


def test_einval_from_a_command_the_kernel_is_too_old_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_bpf.kernel import syscall
    from otel_bpf.kernel._uapi import Cmd

    monkeypatch.setattr(syscall, "kernel_at_least", lambda major, minor: False)
    assert not syscall.command_known(Cmd.ENABLE_STATS)
    monkeypatch.setattr(syscall, "kernel_at_least", lambda major, minor: True)
    assert syscall.command_known(Cmd.ENABLE_STATS)
