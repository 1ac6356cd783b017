"""Real peers for the end-to-end tests: the rotel OTLP collector, a Prometheus server, and
the ``bpftop-otel`` process itself.

Everything listens on 127.0.0.1 on free ports, every wait is bounded, and each process's
output goes to a file whose tail is put into the failure message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True once 127.0.0.1:port accepts connections (False after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<{path} unreadable>"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it (or the last falsy)."""
    deadline = time.monotonic() + timeout
    result = predicate()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = predicate()
    return result


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# -- rotel ---------------------------------------------------------------------------------


def rotel_agent() -> str:
    """Path of the ``rotel-agent`` binary: $ROTEL_AGENT, else next to the ``rotel`` package."""
    path = os.environ.get("ROTEL_AGENT")
    if not path:
        try:
            import rotel  # type: ignore[import-untyped]
        except ImportError:
            pytest.skip("rotel collector not installed (pip install rotel, or set ROTEL_AGENT)")
        path = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
    if not os.access(path, os.X_OK):
        pytest.skip(f"rotel-agent not executable at {path}")
    return path


@dataclass(frozen=True)
class DataPoint:
    """One number data point as rotel's debug exporter printed it."""

    metric: str
    unit: str
    data_type: str
    """``Sum`` or ``Gauge``."""
    monotonic: bool | None
    attributes: dict[str, str]
    value: float
    time_ns: int
    resource: dict[str, str]


_ATTR = re.compile(r"^\s*-> (?P<key>[^:]+): (?P<type>\w+)\((?P<value>.*)\)$")
_FIELD = re.compile(r"^\s*-> (?P<key>\w+): ?(?P<value>.*)$")


def parse_debug_metrics(text: str) -> list[DataPoint]:
    """Data points from rotel's ``--debug-log metrics --debug-log-verbosity detailed``."""
    points: list[DataPoint] = []
    resource: dict[str, str] = {}
    metric = {"name": "", "unit": "", "type": "", "monotonic": ""}
    attrs: dict[str, str] = {}
    section = ""
    time_ns = 0
    for line in text.splitlines():
        if line.startswith("ResourceMetrics #"):
            resource, section = {}, ""
        elif line.startswith("Resource attributes:"):
            section = "resource"
        elif line.startswith("Metric #"):
            metric = {"name": "", "unit": "", "type": "", "monotonic": ""}
            section = ""
        elif line.startswith("Descriptor:"):
            section = "descriptor"
        elif line.startswith("NumberDataPoints #"):
            attrs, section, time_ns = {}, "", 0
        elif line.startswith("Data point attributes:"):
            section = "point"
        elif line.startswith("Timestamp:"):
            time_ns = int(line.split(":", 1)[1].strip() or 0)
        elif line.startswith("Value:"):
            raw = line.split(":", 1)[1].strip()
            try:
                value = float(raw)
            except ValueError:
                continue
            points.append(
                DataPoint(
                    metric=metric["name"],
                    unit=metric["unit"],
                    data_type=metric["type"],
                    monotonic=None if not metric["monotonic"] else metric["monotonic"] == "true",
                    attributes=dict(attrs),
                    value=value,
                    time_ns=time_ns,
                    resource=dict(resource),
                )
            )
        elif section in ("resource", "point") and (m := _ATTR.match(line)):
            (resource if section == "resource" else attrs)[m["key"]] = m["value"]
        elif section == "descriptor" and (m := _FIELD.match(line)):
            key = {"Name": "name", "Unit": "unit", "DataType": "type", "IsMonotonic": "monotonic"}
            if m["key"] in key:
                metric[key[m["key"]]] = m["value"].strip()
    return points


@dataclass
class Rotel:
    """A ``rotel-agent`` receiving OTLP on 127.0.0.1 and printing every data point."""

    workdir: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.workdir / f"rotel-{self.grpc_port}.out"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> Rotel:
        agent = rotel_agent()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            agent,
            "start",
            "--exporter",
            "blackhole",
            "--debug-log",
            "metrics",
            "--debug-log-verbosity",
            "detailed",
            "--otlp-grpc-endpoint",
            f"127.0.0.1:{self.grpc_port}",
            "--otlp-http-endpoint",
            f"127.0.0.1:{self.http_port}",
            "--otlp-receiver-traces-disabled",
            "--otlp-receiver-logs-disabled",
            "--batch-timeout",
            "50ms",
            "--pid-file",
            str(self.workdir / f"rotel-{self.grpc_port}.pid"),
            "--log-file",
            str(self.workdir / f"rotel-{self.grpc_port}.log"),
        ]
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        ok = wait_for_port(self.grpc_port, timeout, self.proc) and wait_for_port(
            self.http_port, timeout, self.proc
        )
        if not ok:
            self.stop()
            pytest.fail(f"rotel did not start listening:\n{tail(self.out)}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def points(self) -> list[DataPoint]:
        """Every data point received so far."""
        try:
            text = self.out.read_text(errors="replace")
        except FileNotFoundError:
            return []
        # A block may be half written: keep complete lines only.
        return parse_debug_metrics(text[: text.rfind("\n") + 1])

    def wait_points(
        self, predicate: Callable[[list[DataPoint]], bool], timeout: float, what: str
    ) -> list[DataPoint]:
        """Poll until ``predicate(points)``; fail with rotel's output tail after ``timeout``."""
        found = wait_until(lambda: (p := self.points()) and predicate(p) and p, timeout)
        if not found:
            pytest.fail(f"rotel never received {what} within {timeout:g} s:\n{tail(self.out)}")
        return list(found)

    def __enter__(self) -> Rotel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Prometheus ----------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A Prometheus server scraping ``target`` (host:port) every second, as job
    ``bpftop-otel``, and the ``more_jobs`` (job name -> host:port) beside it."""

    workdir: Path
    target: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    more_jobs: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> Prometheus:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not os.access(binary, os.X_OK):
            pytest.skip("prometheus not installed (apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        jobs = {"bpftop-otel": self.target, **self.more_jobs}
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            + "".join(
                f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
                for job, target in jobs.items()
            )
        )
        cmd = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        ready = wait_until(self._ready, timeout)
        if not ready:
            self.stop()
            pytest.fail(f"prometheus did not become ready:\n{tail(self.log)}")
        return self

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result vector of an instant query through the HTTP API (evaluated at the Unix
        time ``at``, or now)."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- hostile collectors --------------------------------------------------------------------


class SilentCollector:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers.

    Holds at most ``max_connections`` (later ones are closed at once) and stops after
    ``lifetime`` seconds whatever happens, so a test cannot leave it behind.
    """

    def __init__(self, max_connections: int = 64, lifetime: float = 300.0) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._max = max_connections
        self._deadline = time.monotonic() + lifetime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent collector", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self.accepted += 1
            if len(self._held) < self._max:
                self._held.append(conn)
            else:
                conn.close()
        self._close_all()

    def _close_all(self) -> None:
        for conn in self._held:
            conn.close()
        self._held.clear()
        self._listener.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> SilentCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- bpftop-otel ---------------------------------------------------------------------------


def cli_command() -> list[str]:
    """The installed ``bpftop-otel`` console script next to this Python, else ``-m``."""
    script = Path(sys.executable).parent / "bpftop-otel"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "otel_bpf.cli.main"]


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OTEL_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Cli:
    """A running ``bpftop-otel`` with stdout and stderr captured to files."""

    workdir: Path
    args: Sequence[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    name: str = "bpftop-otel"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.err"

    def start(self) -> Cli:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*cli_command(), *self.args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def json_objects(self) -> list[dict[str, Any]]:
        text = self.stdout()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]

    def describe(self) -> str:
        return f"stderr:\n{tail(self.stderr_path)}\nstdout:\n{tail(self.stdout_path, 10)}"

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"bpftop-otel did not exit within {timeout:g} s\n{self.describe()}")

    def signal(self, signum: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)

    def __enter__(self) -> Cli:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(
    args: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``bpftop-otel`` to completion (bounded) and capture its output."""
    return subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def holds_stats_fd(pid: int) -> bool:
    """Whether process ``pid`` holds an ``anon_inode:bpf-stats`` fd."""
    return stats_fd_count(pid) > 0


def stats_fd_count(pid: int) -> int:
    """How many ``anon_inode:bpf-stats`` fds process ``pid`` holds."""
    count = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-stats":
                    count += 1
    return count


def bpftool_programs() -> list[dict[str, Any]]:
    """``bpftool prog show -j`` (the independent view of what is loaded)."""
    out = subprocess.run(
        ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30, check=True
    )
    return list(json.loads(out.stdout or "[]"))


def children_of(pid: int) -> list[int]:
    """Direct child pids of ``pid`` (all threads)."""
    kids: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                kids += [
                    int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                ]
    return kids
