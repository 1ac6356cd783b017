"""Host facts read from sysfs/procfs: CPUs, kernel release, hostname, the boot-time offset."""

from __future__ import annotations

import os
import socket
import time


def parse_cpu_list(text: str) -> list[int]:
    """CPU numbers of a sysfs cpu list such as ``0-3,5,7-8``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, sep, last = part.partition("-")
        if sep:
            cpus.extend(range(int(first), int(last) + 1))
        else:
            cpus.append(int(first))
    return cpus


ONLINE_CPUS_PATH = "/sys/devices/system/cpu/online"
POSSIBLE_CPUS_PATH = "/sys/devices/system/cpu/possible"


def _cpu_list(path: str) -> list[int]:
    try:
        with open(path) as f:
            cpus = parse_cpu_list(f.read())
    except (OSError, ValueError):
        cpus = []
    return cpus or list(range(os.cpu_count() or 1))


def online_cpus() -> int:
    """Number of online CPUs (``/sys/devices/system/cpu/online``)."""
    return len(_cpu_list(ONLINE_CPUS_PATH))


def possible_cpus() -> list[int]:
    """The CPUs the kernel keeps per-CPU data for and sums per-CPU stats over
    (``for_each_possible_cpu``; ``/sys/devices/system/cpu/possible``)."""
    return _cpu_list(POSSIBLE_CPUS_PATH)


def kernel_release() -> str:
    """The running kernel's release, e.g. ``6.8.0-45-generic``."""
    return os.uname().release


def kernel_version() -> str:
    """``major.minor`` of the running kernel, e.g. ``6.8``."""
    parts = kernel_release().split(".")
    return ".".join(parts[:2])


def hostname() -> str:
    """This host's name."""
    return socket.gethostname()


def boot_time_offset() -> float:
    """Wall-clock time of boot in seconds since the epoch, for CLOCK_BOOTTIME stamps.

    A program's ``load_time`` is nanoseconds of CLOCK_BOOTTIME; bpftool turns it into wall
    time as ``now(REALTIME) - now(BOOTTIME) + load_time``, and so do we.
    """
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def boottime_to_wall(boottime_ns: int, offset: float | None = None) -> float:
    """Seconds since the epoch of a CLOCK_BOOTTIME stamp in nanoseconds."""
    return (boot_time_offset() if offset is None else offset) + boottime_ns / 1e9


def cgroup2_mount_point(mounts: str = "/proc/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or
    ``/sys/fs/cgroup/unified`` in the hybrid layout); None when no cgroup2 file system is
    mounted.  OSError when ``mounts`` cannot be read."""
    with open(mounts) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return fields[1].replace("\\040", " ")  # /proc/mounts writes a space as \040
    return None
