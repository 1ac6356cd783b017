"""``bpf.program.attachment``: one point per program and attach point, through a real SDK
reader; the options and flags that switch it on."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from test_instruments import Feed, collect, points, prog, setup

from otel_bpf.cli import args as cli_args
from otel_bpf.cli.config import resolve
from otel_bpf.cli.main import _metrics_options, _source_options
from otel_bpf.otel import names
from otel_bpf.otel.instruments import enabled_metrics
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.series import SeriesTable, attachment_attributes
from otel_bpf.records import Attachment, ProgramRecord

CONTAINER = "05c45fae4a1941581616a248d2611ade321b80a34b2d558edfb7adec56efe055"
POD = "26988ab4-5b95-45c2-bf6d-29387c585ff9"
POD_CGROUP = (
    "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{POD.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope"
)

XDP = Attachment("xdp", "link", 7, "xdp", "eth0", ifindex=2, ifname="eth0")
TC_OTHER_NETNS = Attachment(
    "tc", "netlink", None, "tcx_egress", "eth0@netns:4026532280", ifindex=3, netns=4026532280,
    direction="egress",
)  # fmt: skip
CGROUP_POD = Attachment(
    "cgroup", "link", 9, "cgroup_inet_egress", POD_CGROUP, cgroup_id=1234,
    cgroup_path=POD_CGROUP, container_id=CONTAINER, pod_uid=POD, qos_class="besteffort",
)  # fmt: skip
CGROUP_HOST = Attachment(
    "cgroup", "prog_attach", None, "cgroup_inet_ingress", "/sys/fs/cgroup/system.slice",
    cgroup_id=99, cgroup_path="/sys/fs/cgroup/system.slice",
)  # fmt: skip
NO_TYPE = Attachment("socket", "socket", None, None, "pid 1234 fd 5", pid=1234, fd=5)


def attached(pid: int, *attachments: Attachment, **kw: Any) -> ProgramRecord:
    return replace(prog(pid, **kw), attachments=attachments)


def series(options: MetricsOptions, records: list[ProgramRecord]) -> list[dict[str, Any]]:
    """The attribute sets of the ``bpf.program.attachment`` points the SDK collects."""
    feed, reader, mp, _ = setup(options)
    feed.push(records)
    got = collect(reader).get(names.PROGRAM_ATTACHMENT.name)
    mp.shutdown()
    if got is None:
        return []
    values = set(points(got).values())
    assert values <= {1}, values  # an info series
    assert got.unit == "1"
    return sorted((dict(k) for k in points(got)), key=lambda a: str(sorted(a.items())))


def program(pid: int, type: str = "socket_filter") -> dict[str, Any]:
    return {names.PROGRAM_ID: pid, names.PROGRAM_NAME: f"p{pid}", names.PROGRAM_TYPE: type}


ON = MetricsOptions(attachment_series=True)


def test_a_device_attachment_names_the_interface() -> None:
    (got,) = series(ON, [attached(1, XDP, type="xdp")])
    assert got == {
        **program(1, "xdp"),
        names.ATTACH_KIND: "xdp",
        names.ATTACH_TYPE: "xdp",
        names.ATTACH_TARGET: "eth0",
        names.ATTACH_VIA: "link",
        names.NETWORK_INTERFACE_NAME: "eth0",
    }


def test_a_device_whose_name_is_unknown_here_has_only_the_target() -> None:
    # An interface in another network namespace: its name here is not known (ifname None);
    # the target says which namespace, and no interface attribute guesses.
    (got,) = series(ON, [attached(1, TC_OTHER_NETNS, type="sched_cls")])
    assert got[names.ATTACH_TARGET] == "eth0@netns:4026532280"
    assert names.NETWORK_INTERFACE_NAME not in got
    assert got[names.ATTACH_KIND] == "tc" and got[names.ATTACH_VIA] == "netlink"


def test_a_cgroup_attachment_in_a_pod_names_the_container_and_pod() -> None:
    (got,) = series(ON, [attached(1, CGROUP_POD, type="cgroup_skb")])
    assert got == {
        **program(1, "cgroup_skb"),
        names.ATTACH_KIND: "cgroup",
        names.ATTACH_TYPE: "cgroup_inet_egress",
        names.ATTACH_TARGET: POD_CGROUP,
        names.ATTACH_VIA: "link",
        names.CONTAINER_ID: CONTAINER,
        names.K8S_POD_UID: POD,
    }


def test_a_cgroup_outside_containers_has_neither_id_never_an_empty_one() -> None:
    (got,) = series(ON, [attached(1, CGROUP_HOST, type="cgroup_skb")])
    assert got[names.ATTACH_VIA] == "prog_attach"
    for key in (names.CONTAINER_ID, names.K8S_POD_UID, names.NETWORK_INTERFACE_NAME):
        assert key not in got


def test_an_attach_type_the_kernel_does_not_report_is_left_out() -> None:
    (got,) = series(ON, [attached(1, NO_TYPE)])
    assert names.ATTACH_TYPE not in got
    assert got[names.ATTACH_TARGET] == "pid 1234" and got[names.ATTACH_KIND] == "socket"


def test_the_sockets_of_one_process_are_one_point() -> None:
    # A filtered listener hands its filter to every connection it accepts: one series per
    # process holding the sockets, not one per connection.
    sockets = [
        Attachment("socket", "socket", None, None, f"pid {pid} fd {fd}", pid=pid, fd=fd)
        for pid, fd in ((812, 3), (812, 4), (812, 9), (900, 3))
    ]
    got = series(ON, [attached(1, *sockets)])
    assert sorted((a[names.ATTACH_TARGET], a[names.PROCESS_PID]) for a in got) == [
        ("pid 812", 812),
        ("pid 900", 900),
    ]


def test_one_point_per_attach_point_none_for_a_program_attached_nowhere() -> None:
    records = [
        attached(1, XDP, CGROUP_POD, CGROUP_HOST),
        attached(2),  # looked up, attached nowhere
        prog(3),  # not looked up (None)
    ]
    got = series(ON, records)
    assert sorted(a[names.ATTACH_TARGET] for a in got) == sorted(
        ["eth0", POD_CGROUP, "/sys/fs/cgroup/system.slice"]
    )
    assert {a[names.PROGRAM_ID] for a in got} == {1}


def test_off_by_default_and_filtered_like_the_other_series() -> None:
    assert series(MetricsOptions(), [attached(1, XDP)]) == []
    assert names.PROGRAM_ATTACHMENT not in enabled_metrics(MetricsOptions())
    filtered = MetricsOptions(attachment_series=True, names=("p2",))
    assert {
        a[names.PROGRAM_ID] for a in series(filtered, [attached(1, XDP), attached(2, XDP)])
    } == {2}


def test_by_name_type_programs_sharing_an_attach_point_are_one_point() -> None:
    options = MetricsOptions(attachment_series=True, attributes="by_name_type")
    got = series(options, [attached(1, XDP, name="same"), attached(2, XDP, name="same")])
    assert len(got) == 1 and names.PROGRAM_ID not in got[0]
    assert got[0][names.PROGRAM_NAME] == "same"


def test_series_follow_attach_points_that_go() -> None:
    feed, reader, mp, _ = setup(ON)
    feed.push([attached(1, XDP, CGROUP_POD)])
    assert len(points(collect(reader)[names.PROGRAM_ATTACHMENT.name])) == 2
    feed.push([attached(1, CGROUP_POD)])
    (left,) = points(collect(reader)[names.PROGRAM_ATTACHMENT.name])
    assert dict(left)[names.ATTACH_KIND] == "cgroup"
    mp.shutdown()


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("plain", "plain"),
        ("caf\udcc3\udca9", "café"),  # UTF-8 bytes smuggled in by surrogateescape
        ("bad\udcff", "bad\ufffd"),  # a byte that is not UTF-8
        ("lone\ud800", "lone\ufffd"),  # any other lone surrogate
        ("\x1b]0;title\x07", "\x1b]0;title\x07"),  # exported as it is, like process names
    ],
)
def test_texts_are_made_valid_utf8_and_otherwise_kept(raw: str, want: str) -> None:
    attachment = Attachment("cgroup", "link", 1, "cgroup_inet_egress", raw, ifname=raw)
    got = attachment_attributes({}, attachment)
    assert got[names.ATTACH_TARGET] == want and got[names.NETWORK_INTERFACE_NAME] == want


def test_hostile_names_encode_for_otlp() -> None:
    hostile = Attachment(
        "xdp", "link", 1, "xdp", "/sys/fs/cgroup/\udcff\x1b[2J", ifname="e\udc80th0"
    )
    feed, reader, provider, _ = setup(ON)
    feed.push([attached(1, hostile)])
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    assert encode_metrics(data).SerializeToString()


def cgroup_at(n: int) -> Attachment:
    path = f"/sys/fs/cgroup/system.slice/unit-{n}.service"
    return Attachment("cgroup", "link", n, "cgroup_inet_egress", path, cgroup_path=path)


def test_attach_points_never_overflow_the_cardinality_limit() -> None:
    """One agent program on 3000 cgroups is 3000 series of one instrument, beyond the SDK's
    default limit of 2000: the limit is sized from the series the callback reports, as for
    every other instrument, so none is folded into overflow; the series of attach points
    that went away are released."""
    feed, reader, mp, inst = setup(ON)
    feed.push([attached(1, *(cgroup_at(n) for n in range(3000)), type="cgroup_skb")])
    got = collect(reader)[names.PROGRAM_ATTACHMENT.name]
    assert len(got.data.data_points) == 3000
    assert not [p for p in got.data.data_points if "otel.metric.overflow" in p.attributes]
    assert inst.pruner is not None and inst.pruner.cardinality_limit >= 3000
    feed.push([attached(1, cgroup_at(0), type="cgroup_skb")])
    (left,) = points(collect(reader)[names.PROGRAM_ATTACHMENT.name])
    assert dict(left)[names.ATTACH_TARGET] == "/sys/fs/cgroup/system.slice/unit-0.service"
    mp.shutdown()


def test_the_series_counts_in_the_frame_like_the_owner_series() -> None:
    # The stale-series pruner and the cardinality limit work per instrument from the points
    # a callback reports: the attachment points are those points.
    table = SeriesTable(MetricsOptions(attachment_series=True, owner_series=True))
    feed = Feed()
    feed.push([attached(i, XDP, CGROUP_POD) for i in range(1, 51)])
    table.feed(feed.snaps[-1])
    assert len(table.frame().get(names.PROGRAM_ATTACHMENT.name)) == 100


def test_options_ask_the_source_for_attach_points() -> None:
    assert ON.needs_attachments and ON.source_options.attachments
    assert not MetricsOptions().source_options.attachments
    assert not ON.needs_owners
    assert names.PROGRAM_ATTACHMENT in enabled_metrics(ON)


def cli(argv: list[str]) -> tuple[MetricsOptions, Any, Any]:
    config = resolve(cli_args.parse_args(argv), {})
    options = _metrics_options(config)
    return options, _source_options(config, options), config


def test_the_flags_switch_the_series_and_their_look_ups_on() -> None:
    options, source, config = cli(["--attachment-series", "--exporter", "prometheus"])
    assert options.attachment_series and not options.owner_series
    assert source.attachments and config.attachments  # implies --attachments
    options, source, config = cli(["--owner-series", "--exporter", "prometheus"])
    assert options.owner_series and not options.attachment_series
    assert source.owners and not source.attachments
    options, source, _ = cli(["--exporter", "prometheus"])
    assert not options.attachment_series and not options.owner_series
    assert not source.attachments and not source.owners


@pytest.mark.parametrize("flag", ["--attachment-series", "--owner-series"])
def test_the_flags_take_no_value(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_args.parse_args([f"{flag}=yes"])
    assert exc.value.code == cli_args.EXIT_USAGE
    assert flag in capsys.readouterr().err
