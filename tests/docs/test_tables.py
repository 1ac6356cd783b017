"""The metrics, flag and JSON tables of README.md and docs/ agree with the code behind them.

Metrics: name, instrument, unit and the ``MetricsOptions`` field that switches an opt-in metric
on, against ``otel_bpf/otel/names.py`` and ``enabled_metrics()``. Flags: every option of the
argparse parser (and no other), its placeholder (or its choices), and its default, against
``otel_bpf/cli/args.py``. JSON: the keys of the ``--json`` schema, in order, and the owners
example, against ``otel_bpf/cli/jsonl.py``. The prose columns are free text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

from markdown_blocks import DOCS, ROOT, code_spans, table_after

from otel_bpf.cli import jsonl
from otel_bpf.cli.args import build_parser
from otel_bpf.otel import names
from otel_bpf.otel.instruments import enabled_metrics
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.records import Owner, ProgramRecord, StatsState, Workload
from otel_bpf.snapshot import build_snapshot

INSTRUMENTS = {"Counter": "counter", "UpDownCounter": "updowncounter", "Gauge": "gauge"}


def opt_in_fields() -> dict[str, str]:
    """Metric name -> the MetricsOptions boolean field that adds it to the export."""
    always = set(enabled_metrics(MetricsOptions()))
    found = {}
    for f in dataclasses.fields(MetricsOptions):
        if f.default is False:
            for metric in set(enabled_metrics(MetricsOptions(**{f.name: True}))) - always:
                found[metric.name] = f.name
    return found


def metric_rows(path_header: tuple[str, str]) -> list[tuple[str, str, str, str | None]]:
    """(name, kind, unit, opt-in field) of each row of a metrics table."""
    path, header = path_header
    rows = []
    for cells in table_after(ROOT / path, header):
        spans = code_spans(cells[0])
        opt_in = re.search(r"\(opt-in `(\w+)`\)", cells[0])
        rows.append(
            (
                spans[0],
                INSTRUMENTS.get(cells[1], cells[1]),
                code_spans(cells[2])[0],
                opt_in[1] if opt_in else None,
            )
        )
    return rows


def expected(metrics: tuple[names.MetricName, ...]) -> list[tuple[str, str, str, str | None]]:
    opt_in = opt_in_fields()
    return [(m.name, m.kind, m.unit, opt_in.get(m.name)) for m in metrics]


def test_metrics_reference_table_matches_names_py() -> None:
    table = metric_rows(("docs/metrics.md", "| name | instrument | unit |"))
    assert table == expected(names.ALL)


def test_readme_metrics_table_is_the_always_on_set() -> None:
    table = metric_rows(("README.md", "| name | instrument | unit |"))
    assert table == expected(names.ALWAYS)


def test_every_opt_in_metric_has_its_field() -> None:
    # The opt-in column above would silently read None for a metric no field switches on.
    assert set(opt_in_fields()) == {m.name for m in names.OPT_IN}


def parser_options() -> dict[str, argparse.Action]:
    return {
        a.option_strings[-1]: a
        for a in build_parser()._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    }


def help_default(action: argparse.Action) -> str:
    """The ``(default: ...)`` part of an option's help text ('' when it has none)."""
    found = re.search(r"default: ([^)]*)\)", action.help or "")
    return found[1] if found else ""


def flag_rows() -> dict[str, list[str]]:
    return {
        code_spans(cells[0])[0]: cells
        for cells in table_after(DOCS / "guide" / "cli.md", "| flag | default | meaning |")
    }


def test_flag_table_lists_every_option_of_the_parser() -> None:
    documented = {spec.split()[0] for spec in flag_rows()}
    assert documented == set(parser_options())


def test_flag_table_placeholders_choices_and_defaults_match_the_parser() -> None:
    options = parser_options()
    for spec, (_, default_cell, meaning) in flag_rows().items():
        flag, *placeholder = spec.split()
        action = options[flag]
        row = " ".join((default_cell, meaning))
        takes_value = action.nargs != 0
        assert bool(placeholder) == takes_value, f"{flag}: placeholder {placeholder}"
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if metavar and not metavar.startswith("{"):
            assert placeholder == [metavar], f"{flag}: the parser's placeholder is {metavar}"
        braced = metavar is not None and metavar.startswith("{")
        choices = action.choices or (metavar[1:-1].split(",") if braced and metavar else ())
        for choice in choices:
            assert f"`{choice}`" in row, f"{flag}: choice {choice!r} not in the table"
        if action.default not in (None, False) and not isinstance(action, argparse._VersionAction):
            shown = f"{action.default:g}" if isinstance(action.default, float) else action.default
            assert f"`{shown}`" in default_cell, f"{flag}: the parser's default is {shown!r}"
        said = help_default(action)
        spans = code_spans(default_cell)
        if spans:
            for span in spans:
                assert span in said, f"{flag}: default {span!r} is not what --help says ({said})"
        elif default_cell:
            assert default_cell in said, f"{flag}: default {default_cell!r} vs --help ({said})"


def json_rows() -> list[list[str]]:
    return table_after(DOCS / "guide" / "cli.md", "| key | type | meaning |")


def test_json_schema_table_lists_every_key_in_order() -> None:
    keys = [key for cells in json_rows() for key in code_spans(cells[0])]
    assert keys == list(jsonl.FIELDS)


def test_json_schema_owners_example_is_what_the_writer_writes() -> None:
    (meaning,) = [cells[2] for cells in json_rows() if cells[0] == "`owners`"]
    example = json.loads(next(span for span in code_spans(meaning) if span.startswith("[")))
    owners = tuple(
        Owner(
            pid=o["pid"],
            comm=o["comm"],
            executable="",
            via=tuple(o["via"]),
            workload=Workload(o["cgroup"], o["container_id"], o["pod_uid"]),
        )
        for o in example
    )
    record = ProgramRecord(
        id=1,
        type="xdp",
        type_id=6,
        name="p",
        tag="0" * 16,
        run_time_ns=0,
        run_cnt=0,
        recursion_misses=0,
        load_time=0.0,
        uid=0,
        verified_insns=2,
        xlated_size=16,
        jited_size=16,
        map_ids=(),
        btf_id=0,
        memlock_bytes=4096,
        owners=owners,
    )
    snapshot = build_snapshot(
        None,
        [record],
        monotonic=0.0,
        wall_time=0.0,
        online_cpus=1,
        stats=StatsState(ours=False, sysctl=False, others=False),
    )
    assert jsonl.sample_object(snapshot.programs[0], snapshot)["owners"] == example


def test_prometheus_endpoint_limits_table_matches_the_server() -> None:
    from otel_bpf.cli import prometheus_server as server

    rows = table_after(DOCS / "deployment.md", "| limit | value | when it is passed |")
    values = [cells[1].split(" from ")[0].split(",")[0] for cells in rows]
    assert values == [
        str(server.MAX_CONNECTIONS),
        f"{server.REQUEST_TIMEOUT:g} s",
        f"{server.MAX_REQUEST_BYTES // 1024} KiB",
        str(server.MAX_RESPONSES),
        f"{server.RESPONSE_TIMEOUT:g} s",
    ]
