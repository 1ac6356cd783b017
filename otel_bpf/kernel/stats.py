"""The run-time statistics switch: one ``BPF_ENABLE_STATS`` fd per process, refcounted.

The kernel counts ``run_time_ns``/``run_cnt`` only while stats are enabled, and it keeps them
enabled while any process holds a ``BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`` fd (5.8+). The fd
is closed by the kernel when the process dies, SIGKILL included, so holding it is safe.
Inside the process, every consumer acquires and releases; the fd is open from the first
acquire to the last release.

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
from collections.abc import Iterator
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


class StatsSwitch:
    """The process-wide stats holder; every instance is the same object.

    ``acquire()``/``release()`` may be nested and called from any thread.
    """

    _instance: StatsSwitch | None = None
    _new_lock = threading.Lock()

    _lock: threading.Lock
    _count: int
    _fd: int | None
    _sysctl_set: bool
    _atexit_registered: bool

    def __new__(cls) -> StatsSwitch:
        with cls._new_lock:
            if cls._instance is None:
                self = super().__new__(cls)
                self._lock = threading.Lock()
                self._count = 0
                self._fd = None
                self._sysctl_set = False
                self._atexit_registered = False
                cls._instance = self
            return cls._instance

    @property
    def held(self) -> bool:
        """Stats are on because of this process (fd held or sysctl set by us)."""
        return self._count > 0

    @property
    def count(self) -> int:
        """How many acquires are outstanding."""
        return self._count

    @property
    def fd_held(self) -> bool:
        """This process holds a BPF_ENABLE_STATS fd."""
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


def _restore_on_default_termination(switch: StatsSwitch) -> None:
    """Restore the sysctl before a default-action SIGTERM/SIGHUP ends the process.

    Only signals still at SIG_DFL, and only from the main thread (the one place handlers can
    be set): a program with its own handlers shuts down through ``finally``/``atexit``.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def restore_then_die(signum: int, frame: object) -> None:
        # No lock here: the interrupted main thread may hold it; a stale write is harmless.
        if switch._sysctl_set:
            switch._sysctl_set = False
            with suppress(OSError):
                _write_sysctl(False)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, restore_then_die)


@contextmanager
def stats_enabled(*, allow_sysctl: bool = False) -> Iterator[StatsSwitch]:
    """Keep run-time stats on for the ``with`` block (nested uses share one fd)."""
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
    ours = StatsSwitch().fd_held
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
