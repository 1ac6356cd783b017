"""Tie a child process's lifetime to its parent (prctl PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
import signal

from otel_bpf.kernel.syscall import libc

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent goes away.

    The kernel sends it when the parent *thread* that forked us exits, not only the whole
    parent process, so parents that may fork from short-lived threads should not ask for it.
    Returns False when the parent is already gone (we were re-parented before the call
    took effect), in which case the caller should exit.
    """
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return os.getppid() == expected_parent
