"""What the benchmark scripts share: loading N tiny programs, the C baseline, running programs
with BPF_PROG_TEST_RUN, a local rotel, process CPU/RSS from procfs, and the machine line.

The scripts run as root on purpose (``tox -e bench``); they are measurements, never tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import Cmd, ProgType
from otel_bpf.kernel.loader import load_program
from otel_bpf.kernel.syscall import bpf

HERE = Path(__file__).resolve().parent
PASS_ALL = asm.assemble([asm.mov64_imm(asm.R0, -1), asm.exit_()])
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the machine -----------------------------------------------------------------------------


def machine() -> str:
    """``2 CPUs, AMD EPYC, Linux 6.18.44, 2026-11-22 04:40 UTC`` (the README's table line)."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{os.cpu_count()} CPUs, {model}, Linux {platform.release()}, {now}"


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- programs --------------------------------------------------------------------------------


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, needed + 1024)), hard))


@contextlib.contextmanager
def loaded_filters(count: int, name: str = "bench_filter") -> Iterator[list[int]]:
    """``count`` tiny socket filters (their fds, grown with :func:`grow`), all closed at exit."""
    raise_nofile(count)
    fds: list[int] = []
    try:
        grow(fds, count, name)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def grow(fds: list[int], count: int, name: str = "bench_filter") -> None:
    """Load socket filters into ``fds`` until it holds ``count``."""
    raise_nofile(count)
    while len(fds) < count:
        fds.append(load_program(ProgType.SOCKET_FILTER, PASS_ALL, name))


class TestRunAttr(ctypes.Structure):
    """``union bpf_attr`` for BPF_PROG_TEST_RUN (include/uapi/linux/bpf.h, ``test``)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),  # mean ns per run, measured by the kernel
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


# An Ethernet + IPv4 + UDP frame: enough for skb and XDP test runs.
PACKET = bytes(
    bytes.fromhex("ffffffffffff0200000000010800")
    + bytes.fromhex("4500003200004000401100007f0000017f000001")
    + bytes.fromhex("30393039001e0000")
    + b"x" * 22
)
_packet_buf = ctypes.create_string_buffer(PACKET, len(PACKET))


def test_run(fd: int, repeat: int = 1) -> int:
    """Run program ``fd`` ``repeat`` times on :data:`PACKET`; the kernel's mean ns per run."""
    attr = TestRunAttr(
        prog_fd=fd,
        data_size_in=len(PACKET),
        data_in=ctypes.addressof(_packet_buf),
        repeat=repeat,
    )
    bpf(Cmd.PROG_TEST_RUN, attr, "test run")
    return int(attr.duration)


# -- timing ----------------------------------------------------------------------------------


def median_s(
    fn: Callable[[], object], passes: int, between: Callable[[], object] | None = None
) -> float:
    """Median seconds of ``fn()`` over ``passes`` runs after a warm-up; ``between`` runs
    untimed before each timed run."""
    fn()
    times = []
    for _ in range(passes):
        if between is not None:
            between()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_c(tmp: Path, source: str = "prog_loop.c") -> Path:
    exe = tmp / Path(source).stem
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "c" / source)], check=True)
    return exe


def c_loop_ns(exe: Path, passes: int, run: bool = False) -> tuple[int, float]:
    """The C loop's (programs, median ns per program); with ``run``, every program runs once
    (untimed) before each timed pass."""
    cmd = [str(exe), str(passes)] + (["run"] if run else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    programs, _best, median = out.stdout.split()
    return int(programs), float(median)


# -- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.02)
    return False


def rotel_agent() -> str:
    path = os.environ.get("ROTEL_AGENT")
    if not path:
        import rotel  # type: ignore[import-untyped]

        path = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
    return path


@dataclass
class Rotel:
    """A local ``rotel-agent`` (OTLP gRPC on 127.0.0.1, blackhole exporter) that logs a line
    per received batch (``--debug-log metrics``), so the first export can be seen."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-rotel-")))
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.workdir / "rotel.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def received(self) -> bool:
        """rotel logged a received metrics batch."""
        try:
            return "Received metrics" in self.out.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def __enter__(self) -> Rotel:
        cmd = [
            rotel_agent(),
            "start",
            "--exporter",
            "blackhole",
            "--debug-log",
            "metrics",
            "--otlp-grpc-endpoint",
            f"127.0.0.1:{self.port}",
            "--otlp-http-endpoint",
            f"127.0.0.1:{self.http_port}",
            "--otlp-receiver-traces-disabled",
            "--otlp-receiver-logs-disabled",
            "--batch-timeout",
            "50ms",
            "--pid-file",
            str(self.workdir / "rotel.pid"),
            "--log-file",
            str(self.workdir / "rotel.log"),
        ]
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
            )
        if not wait_port(self.port, 20):
            self.__exit__()
            raise RuntimeError("rotel-agent did not start listening")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def bpftop_otel() -> list[str]:
    """The ``bpftop-otel`` next to this Python, else ``python -m otel_bpf.cli.main``."""
    import sys

    script = Path(sys.executable).parent / "bpftop-otel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "otel_bpf.cli.main"]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


TMUX_SOCKET = f"otel-bpf-bench-{os.getpid()}"


def tmux(*args: str, check: bool = True) -> str:
    """Run tmux on the benchmarks' own server (``-L``), never the user's."""
    return subprocess.run(
        ["tmux", "-L", TMUX_SOCKET, *args], capture_output=True, text=True, check=check, timeout=30
    ).stdout


def live_frame_shown(text: str) -> bool:
    """The live view's first frame is on the pane (title, table header, row count)."""
    return "bpftop-otel" in text and "Name" in text and "rows " in text


# -- a baseline checkout ----------------------------------------------------------------------


@contextlib.contextmanager
def checkout(ref_or_dir: str, repo: Path) -> Iterator[Path]:
    """A directory holding ``ref_or_dir``'s otel_bpf: the directory itself, or a temporary
    worktree of the commit, removed afterwards."""
    if Path(ref_or_dir).is_dir():
        path = Path(ref_or_dir).resolve()
        if not (path / "otel_bpf" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {path}: not an otel-bpf checkout")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="otel-bpf-baseline-") as tmp:
        path = Path(tmp) / "checkout"
        git = ["git", "-C", str(repo), "worktree"]
        added = subprocess.run(
            [*git, "add", "--detach", str(path), ref_or_dir], capture_output=True, text=True
        )
        if added.returncode != 0:
            raise SystemExit(f"--baseline {ref_or_dir}: {added.stderr.strip()}")
        try:
            yield path
        finally:
            subprocess.run([*git, "remove", "--force", str(path)], capture_output=True)


def span(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if low == high else f"{low:.{digits}f}-{high:.{digits}f}"
