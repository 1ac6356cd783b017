"""The run-time statistics switch: a refcounted ``BPF_ENABLE_STATS`` fd.

The kernel counts ``run_time_ns``/``run_cnt`` only while stats are enabled, and it keeps them
enabled while any process holds a ``BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`` fd (5.8+). The fd
is closed by the kernel when the process dies, SIGKILL included, so holding it is safe.
A :class:`StatsSwitch` is refcounted: its users acquire and release, its fd is open from the
first acquire to the last release.  It is an ordinary object: whoever composes a program
makes one and passes it to every user that should share the fd (``bpftop-otel`` holds one fd
per run this way); two switches hold two fds.

Kernels before 5.8 only have the legacy sysctl ``kernel.bpf_stats_enabled``. It is global and
survives us, so it is used only when asked (``allow_sysctl=True``), and the previous value is
restored on release, at interpreter exit and on a SIGTERM/SIGHUP left at its default action
(which ends the process without running ``atexit``). It is never switched off if it was
already on.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from otel_bpf.kernel._uapi import BPF_STATS_RUN_TIME, Cmd, EnableStatsAttr
from otel_bpf.kernel.errors import BpfUnsupportedError
from otel_bpf.kernel.owners import iter_stats_holders
from otel_bpf.kernel.syscall import bpf, close
from otel_bpf.records import StatsState

SYSCTL_PATH = "/proc/sys/kernel/bpf_stats_enabled"


def _enable_stats_fd() -> int:
    return bpf(Cmd.ENABLE_STATS, EnableStatsAttr(type=BPF_STATS_RUN_TIME), "run time stats")


def read_sysctl() -> bool | None:
    """Whether ``kernel.bpf_stats_enabled`` is 1; None when it cannot be read.

    The sysctl reports only its own setting, not whether some process holds a stats fd.
    """
    try:
        with open(SYSCTL_PATH) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def _write_sysctl(on: bool) -> None:
    with open(SYSCTL_PATH, "w") as f:
        f.write("1\n" if on else "0\n")


class _FdsHeld:
    """How many BPF_ENABLE_STATS fds the switches of this process hold right now.

    ``stats_state().ours`` is a fact about the process (the kernel sees one process holding
    stats, whichever switch opened the fd); each switch counts its fd in and out here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    @property
    def count(self) -> int:
        return self._count


_fds_held = _FdsHeld()


def fds_held() -> int:
    """How many BPF_ENABLE_STATS fds the :class:`StatsSwitch` objects of this process hold
    (0 or 1 in a process that makes one switch, as ``bpftop-otel`` does)."""
    return _fds_held.count


class StatsSwitch:
    """A refcounted holder of kernel run-time statistics: at most one ``BPF_ENABLE_STATS`` fd,
    open from the first :meth:`acquire` to the last :meth:`release`.

    Each switch holds its own fd; users meant to share one fd share one switch (the
    composition root, e.g. ``bpftop-otel``'s ``main``, makes it and passes it on).
    ``acquire()``/``release()`` may be nested and called from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._fd: int | None = None
        self._sysctl_set = False
        self._atexit_registered = False

    def __repr__(self) -> str:
        return f"<StatsSwitch users={self._count} fd_held={self._fd is not None}>"

    @property
    def held(self) -> bool:
        """Stats are on because of this switch (fd held or sysctl set by it)."""
        return self._count > 0

    @property
    def count(self) -> int:
        """How many acquires are outstanding."""
        return self._count

    @property
    def fd_held(self) -> bool:
        """This switch holds a BPF_ENABLE_STATS fd."""
        return self._fd is not None

    def acquire(self, *, allow_sysctl: bool = False) -> None:
        """Turn stats on (or keep them on) for one more user.

        Raises BpfUnsupportedError on a kernel without BPF_ENABLE_STATS unless
        ``allow_sysctl``, BpfPermissionError without CAP_SYS_ADMIN.
        """
        with self._lock:
            if self._count == 0:
                try:
                    self._fd = _enable_stats_fd()
                    _fds_held.add(1)
                except BpfUnsupportedError:
                    if not allow_sysctl:
                        raise
                    self._enable_sysctl()
            self._count += 1

    def release(self) -> None:
        """One user is done; the last one turns stats off (closes the fd/restores the sysctl)."""
        with self._lock:
            if self._count == 0:
                raise RuntimeError("StatsSwitch.release() without a matching acquire()")
            self._count -= 1
            if self._count == 0:
                self._turn_off()

    def _enable_sysctl(self) -> None:
        if read_sysctl():
            return  # already on by someone else: leave it exactly as it is
        if not self._atexit_registered:
            atexit.register(self._restore_at_exit)
            _restore_on_default_termination(self)
            self._atexit_registered = True
        _write_sysctl(True)
        self._sysctl_set = True

    def _turn_off(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _fds_held.add(-1)
            close(fd)
        if self._sysctl_set:
            self._sysctl_set = False
            _write_sysctl(False)

    def _restore_at_exit(self) -> None:
        with self._lock:
            if self._sysctl_set:
                self._sysctl_set = False
                with suppress(OSError):
                    _write_sysctl(False)


_RESTORES_SYSCTL = "_otel_bpf_restores_sysctl"
"""Marks a signal handler installed here, so a later switch chains onto it."""


def _restore_on_default_termination(switch: StatsSwitch) -> None:
    """Restore the sysctl before a default-action SIGTERM/SIGHUP ends the process.

    Only signals still at SIG_DFL (or at the handler another switch installed here, which the
    new one calls after its own restore), and only from the main thread (the one place
    handlers can be set): a program with its own handlers shuts down through
    ``finally``/``atexit``.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)
        if previous is signal.SIG_DFL or getattr(previous, _RESTORES_SYSCTL, False):
            signal.signal(signum, _restore_then_die(switch, previous))


def _restore_then_die(switch: StatsSwitch, previous: object) -> Callable[[int, object], None]:
    def restore_then_die(signum: int, frame: object) -> None:
        # No lock here: the interrupted main thread may hold it; a stale write is harmless.
        if switch._sysctl_set:
            switch._sysctl_set = False
            with suppress(OSError):
                _write_sysctl(False)
        if callable(previous):
            previous(signum, frame)  # another switch's restore, which then dies
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    setattr(restore_then_die, _RESTORES_SYSCTL, True)
    return restore_then_die


@contextmanager
def stats_enabled(
    switch: StatsSwitch | None = None, *, allow_sysctl: bool = False
) -> Iterator[StatsSwitch]:
    """Keep run-time stats on for the ``with`` block through ``switch`` (a fresh one when
    None); nested blocks given the same switch share its one fd."""
    if switch is None:
        switch = StatsSwitch()
    switch.acquire(allow_sysctl=allow_sysctl)
    try:
        yield switch
    finally:
        switch.release()


OTHERS_RESCAN_WHILE_OURS = 30.0
"""Seconds a scan for other holders is reused while this process holds stats itself.

The scan walks every ``/proc/*/fd`` (about 30 µs per process): every tick it was most of a
sampling pass.  While our own fd keeps stats on, another holder changes nothing but the text
of :meth:`StatsState.describe`, so it is looked for twice a minute; without our fd, every call.
"""

_others_scan: tuple[float, bool] | None = None  # (time.monotonic(), found)


def stats_state() -> StatsState:
    """Whether stats are being counted right now, and who keeps them on.

    ``others`` scans ``/proc/*/fd`` for ``anon_inode:bpf-stats`` outside this process (up to
    the first holder found); on a host with thousands of processes this costs milliseconds,
    so while this process holds stats a scan is reused for :data:`OTHERS_RESCAN_WHILE_OURS`.
    """
    ours = fds_held() > 0
    return StatsState(ours=ours, sysctl=bool(read_sysctl()), others=_others_hold_stats(ours))


def _others_hold_stats(ours: bool) -> bool:
    global _others_scan
    now = time.monotonic()
    scan = _others_scan
    if ours and scan is not None and now - scan[0] < OTHERS_RESCAN_WHILE_OURS:
        return scan[1]
    found = next(iter_stats_holders(exclude_pid=os.getpid()), None) is not None
    _others_scan = (now, found)
    return found
