"""The metrics and flag tables of README.md and docs/ agree with the code that defines them.

Metrics: name, instrument, unit and the ``MetricsOptions`` field that switches an opt-in metric
on, against ``otel_bpf/otel/names.py`` and ``enabled_metrics()``. Flags: every option of the
argparse parser (and no other), its placeholder (or its choices), and its default, against
``otel_bpf/cli/args.py``. The prose columns are free text.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from markdown_blocks import DOCS, ROOT, code_spans, table_after

from otel_bpf.cli.args import build_parser
from otel_bpf.otel import names
from otel_bpf.otel.instruments import enabled_metrics
from otel_bpf.otel.options import MetricsOptions

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
