"""The parent side of the demo workload: start the worker process, talk to it, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

from otel_bpf.demo import cgroup
from otel_bpf.demo import programs as demo
from otel_bpf.demo.traffic import check_rate

DEFAULT_READY_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 5.0
REPLY_TIMEOUT = 5.0


class DemoWorkloadError(RuntimeError):
    """The demo workload could not start or stopped answering; the message says why."""


def normalize_rates(rates: Mapping[str, float] | None) -> dict[str, float]:
    """Rates keyed by full program name (``sock`` and ``otel_demo_sock`` both accepted)."""
    out: dict[str, float] = {}
    for name, rate in (rates or {}).items():
        full = demo.canonical_name(name)
        out[full] = check_rate(full, rate)
    return out


def _child_env() -> dict[str, str]:
    """The environment of the worker: ours, with this copy of otel_bpf first on its path,
    so the child runs the same code even when the package was found through ``sys.path``
    changes rather than an installation."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class DemoWorkload:
    """Real BPF programs driven by real packets, in a child process, for demos and tests.

    ``with DemoWorkload({"sock": 500}) as w:`` starts ``python -m otel_bpf.demo.worker``,
    which unshares a network namespace, loads four programs named ``otel_demo_*``
    (socket_filter, xdp, cgroup_skb and a slower socket_filter with a loop) and makes each
    run at its rate (runs per second; defaults in :data:`otel_bpf.demo.programs.DEFAULT_RATES`).
    Leaving the block stops the child (SIGTERM, then SIGKILL), and removes its cgroup;
    the programs, links, namespace and veth pair go with the child.

    If this process dies without leaving the block, the child sees end of file on its
    stdin (and, when started from the main thread, a parent-death signal) and cleans up by
    itself; a cgroup left by a child killed outright is removed at the next start.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self._requested = normalize_rates(rates)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._buf = b""
        self._lock = threading.Lock()
        self._program_ids: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        self._cgroup: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> DemoWorkload:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the worker and wait until its programs are loaded and attached."""
        if self._proc is not None:
            raise DemoWorkloadError("the demo workload is already running")
        cgroup.remove_stale(demo.CGROUP_PREFIX)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        cmd = [
            sys.executable,
            "-m",
            "otel_bpf.demo.worker",
            "--parent",
            str(os.getpid()),
            "--rates",
            json.dumps(self._requested),
        ]
        # The parent-death signal fires when the forking *thread* exits, so it is only
        # asked for from the main thread; end of file on stdin covers every case.
        if threading.current_thread() is threading.main_thread():
            cmd.append("--pdeathsig")
        self._proc = subprocess.Popen(
            cmd,
            env=_child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            close_fds=True,
            # Own session: a Ctrl-C at the terminal reaches the parent, which stops the
            # child in order, instead of hitting both at once.
            start_new_session=True,
        )
        try:
            msg = self._read_message(self.ready_timeout, "to start")
            if "error" in msg:
                raise DemoWorkloadError(f"demo workload failed: {msg['error']}")
            if not msg.get("ready"):
                raise DemoWorkloadError(f"demo workload sent an unexpected message: {msg}")
        except BaseException:
            self.stop()
            raise
        self._program_ids = {str(k): int(v) for k, v in msg["programs"].items()}
        self._rates = {str(k): float(v) for k, v in msg["rates"].items()}
        self._cgroup = msg.get("cgroup")

    def stop(self) -> None:
        """Stop the worker (SIGTERM, SIGKILL after ``stop_timeout``) and remove its cgroup.

        Safe to call more than once and after the worker died on its own.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
            # The child removes its cgroup itself; this covers a child killed outright.
            with contextlib.suppress(OSError):
                path = self._cgroup or os.path.join(
                    cgroup.cgroup2_mount(), f"{demo.CGROUP_PREFIX}{proc.pid}"
                )
                cgroup.remove(path)
            self._cgroup = None
            self._buf = b""

    # -- state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Process id of the worker."""
        return self._running().pid

    @property
    def program_ids(self) -> dict[str, int]:
        """Program name -> kernel program id, for every demo program."""
        return dict(self._program_ids)

    @property
    def rates(self) -> dict[str, float]:
        """Program name -> current rate in runs per second."""
        return dict(self._rates)

    @property
    def cgroup_path(self) -> str | None:
        """The worker's cgroup directory (removed on stop)."""
        return self._cgroup

    def alive(self) -> bool:
        """Whether the worker process still runs."""
        return self._proc is not None and self._proc.poll() is None

    def sent(self) -> dict[str, int]:
        """Packets sent so far per program: each is exactly one run of that program."""
        reply = self._request({"cmd": "sent"})
        return {str(k): int(v) for k, v in reply["sent"].items()}

    def set_rates(self, rates: Mapping[str, float]) -> dict[str, float]:
        """Change the rates of the named programs (0 pauses one); returns all rates."""
        reply = self._request({"cmd": "rates", "rates": normalize_rates(rates)})
        self._rates = {str(k): float(v) for k, v in reply["rates"].items()}
        return self.rates

    def pause(self) -> dict[str, int]:
        """Stop all traffic and return the packets sent per program."""
        self.set_rates(dict.fromkeys(self._program_ids, 0.0))
        return self.sent()

    # -- pipe protocol -------------------------------------------------------------------

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise DemoWorkloadError("the demo workload is not running")
        return self._proc

    def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            proc = self._running()
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps(msg) + "\n").encode())
                proc.stdin.flush()
            except OSError:
                raise DemoWorkloadError(self._death_reason("stopped")) from None
            reply = self._read_message(REPLY_TIMEOUT, "to answer")
        if "error" in reply:
            raise DemoWorkloadError(f"demo workload: {reply['error']}")
        return reply

    def _read_message(self, timeout: float, doing: str) -> dict[str, Any]:
        proc = self._running()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoWorkloadError(f"demo workload took longer than {timeout:g} s {doing}")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise DemoWorkloadError(self._death_reason("exited"))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise DemoWorkloadError(f"demo workload wrote {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise DemoWorkloadError(f"demo workload wrote {line[:200]!r}")
        return msg

    def _death_reason(self, what: str) -> str:
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(1.0)
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            tail = f": {lines[-1]}" if lines else ""
        return f"demo workload {what} unexpectedly (exit status {code}){tail}"
