"""Where each program is attached, in the live view: the Attached column's short form for
every kind, the detail view's listing, the filter on targets and interfaces (pure)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest
from live_samples import program, snapshots
from test_live_render import column_header, render, row_of, texts

from otel_bpf.live.attached import SHORT_MAX, attached_text, detail_lines, short_form
from otel_bpf.live.render_table import DROP_ORDER, LABELS
from otel_bpf.live.sanitize import display_width
from otel_bpf.live.state import Column, Mode, ViewState, visible_rows
from otel_bpf.records import Attachment
from otel_bpf.snapshot import Snapshot

CONTAINER = "c0ffee" + "0123456789abcdef" * 3 + "0a1b2c3d4e"
POD = "26988ab4-5b95-45c2-bf6d-29387c585ff9"
POD_SLICE = "kubepods-besteffort-pod26988ab4_5b95_45c2_bf6d_29387c585ff9.slice"
POD_DIR = f"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/{POD_SLICE}"
SCOPE = f"{POD_DIR}/cri-containerd-{CONTAINER}.scope"
NETNS = 4026532280

ESC = "\x1b[2J\x1b]0;x\x07"
ESC_SHOWN = "\\x1b[2J\\x1b]0;x\\x07"


@dataclasses.dataclass(frozen=True, slots=True)
class _WithComm(Attachment):
    comm: str | None = None


def socket(pid: int, fd: int, comm: str | None) -> Attachment:
    """A socket attachment; with the process's name when the record type has the field
    (the socket source adds it), else a record carrying it as an extra field."""
    base = Attachment("socket", "socket", None, None, f"pid {pid} fd {fd}", pid=pid, fd=fd)
    if comm is None:
        return base
    if "comm" in {f.name for f in dataclasses.fields(Attachment)}:
        return replace(base, comm=comm)  # type: ignore[call-arg]
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Attachment)}
    return _WithComm(**fields, comm=comm)


def eth(kind: str, via: str, attach_type: str | None, **extra: object) -> Attachment:
    return Attachment(kind, via, 3 if via == "link" else None, attach_type, "eth0",
                      ifindex=2, ifname="eth0", **extra)  # type: ignore[arg-type]  # fmt: skip


def cgroup(
    path: str,
    container_id: str | None = None,
    pod_uid: str | None = None,
    qos_class: str | None = None,
) -> Attachment:
    return Attachment("cgroup", "link", 7, "cgroup_inet_egress", path, cgroup_id=4242,
                      cgroup_path=path, container_id=container_id, pod_uid=pod_uid,
                      qos_class=qos_class)  # fmt: skip


CONTAINER_CG = cgroup(SCOPE, container_id=CONTAINER, pod_uid=POD, qos_class="besteffort")

KINDS: list[tuple[Attachment, str]] = [
    (eth("xdp", "link", "xdp"), "xdp eth0"),
    (eth("xdp", "netlink", "xdp", mode="drv"), "xdp eth0"),
    (
        Attachment(
            "xdp",
            "netlink",
            None,
            "xdp",
            f"eth0@netns:{NETNS}",
            ifindex=2,
            ifname="eth0",
            netns=NETNS,
            mode="skb",
        ),  # fmt: skip
        "xdp eth0@ns...2280",
    ),
    # A device in another namespace whose name was not resolved.
    (Attachment("xdp", "link", 4, "xdp", "if7", ifindex=7), "xdp if7"),
    (eth("tc", "netlink", "tc_ingress", direction="ingress", priority=1), "tc eth0 in"),
    (eth("tc", "netlink", "tc_egress", direction="egress", priority=49152), "tc eth0 out"),
    (eth("tcx", "link", "tcx_egress", direction="egress"), "tcx eth0 out"),
    (
        Attachment(
            "netkit", "link", 6, "netkit_peer", "nk0", ifindex=9, ifname="nk0", direction="peer"
        ),  # fmt: skip
        "netkit nk0 peer",
    ),
    (CONTAINER_CG, "cgroup .../cri-containerd-c0ffee012345.scope"),
    (cgroup(POD_DIR, pod_uid=POD), "cgroup .../kubepods-besteffort-pod26988ab4.slice"),
    (cgroup("/sys/fs/cgroup/system.slice/sshd.service"), "cgroup .../sshd.service"),
    (cgroup("/sys/fs/cgroup"), "cgroup /"),
    (
        Attachment("cgroup", "link", 8, "cgroup_device", "cgroup id 1234", cgroup_id=1234),
        "cgroup id 1234",
    ),
    (
        Attachment(
            "cgroup",
            "prog_attach",
            None,
            "cgroup_inet_ingress",
            SCOPE,
            cgroup_path=SCOPE,
            container_id=CONTAINER,
        ),  # fmt: skip
        "cgroup .../cri-containerd-c0ffee012345.scope",
    ),
    (socket(812, 5, "python3"), "sock python3(812)"),
    (socket(812, 5, None), "sock pid 812"),
    (Attachment("raw_tracepoint", "link", 9, "trace_raw_tp", "sys_enter"), "raw_tp sys_enter"),
    (Attachment("iter", "link", 10, "trace_iter", "bpf_prog"), "iter bpf_prog"),
    (
        Attachment("netns", "link", 11, "sk_lookup", "net:[4026531840]", netns=4026531840),
        "netns net:[4026531840]",
    ),
    (
        Attachment("netns", "prog_attach", None, "flow_dissector", f"net:[{NETNS}]", netns=NETNS),
        f"netns net:[{NETNS}]",
    ),
    (
        Attachment("tracing", "link", 12, "trace_fentry", "tcp_v4_connect"),
        "fentry tcp_v4_connect",
    ),
    (Attachment("tracing", "link", 13, "lsm_mac", "file_open"), "lsm file_open"),
    (
        Attachment("kprobe", "link", 14, "perf_event", "kretprobe tcp_v4_connect"),
        "kretprobe tcp_v4_connect",
    ),
    (
        Attachment("kprobe", "link", 15, "trace_kprobe_multi", "kprobe.multi 3 functions"),
        "kprobe.multi 3 functions",
    ),
    (
        Attachment("uprobe", "link", 16, "perf_event", "uprobe /usr/bin/bash+0x1f0"),
        "uprobe /usr/bin/bash+0x1f0",
    ),
    (Attachment("tracepoint", "link", 17, "perf_event", "sched_switch"), "tp sched_switch"),
    (
        Attachment("perf_event", "perf_event", None, "perf_event", "event type 1 config 0x0"),
        "perf event type 1 config 0x0",
    ),
    (
        Attachment("netfilter", "link", 18, "netfilter", "ipv4 input", priority=-128),
        "nf ipv4 input",
    ),
    (
        Attachment("struct_ops", "link", 19, "struct_ops", "map 12", map_id=12),
        "struct_ops map 12",
    ),
    (
        Attachment("sockmap", "prog_attach", None, "sk_skb_stream_verdict", "map 5", map_id=5),
        "sockmap map 5",
    ),
    (Attachment("link_type_99", "link", 20, None, ""), "link_type_99"),
]


@pytest.mark.parametrize(("attachment", "text"), KINDS)
def test_the_column_reads_each_kind_in_a_few_words(attachment: Attachment, text: str) -> None:
    assert attached_text(program(1, attachments=(attachment,))) == text


def test_more_attachments_show_as_plus_n_and_none_found_or_not_asked_differ() -> None:
    first, second, third = (a for a, _ in KINDS[:3])
    assert attached_text(program(1, attachments=(first, second, third))) == "xdp eth0 +2"
    assert attached_text(program(1, attachments=())) == "-"
    assert attached_text(program(1, attachments=None)) == "?"


HOSTILE: list[tuple[Attachment, str]] = [
    (
        Attachment("xdp", "link", 3, "xdp", ESC, ifindex=2, ifname=ESC),
        f"xdp {ESC_SHOWN}",
    ),
    (
        Attachment("xdp", "netlink", None, "xdp", f"{ESC}@netns:{NETNS}", ifname=ESC),
        f"xdp {ESC_SHOWN}@ns...2280",
    ),
    (socket(1, 3, ESC), f"sock {ESC_SHOWN}(1)"),
    (cgroup(f"/sys/fs/cgroup/a/\u202eevil{ESC}"), f"cgroup .../\\u202eevil{ESC_SHOWN}"),
    (Attachment("raw_tracepoint", "link", 9, None, f"tp{ESC}"), f"raw_tp tp{ESC_SHOWN}"),
    (Attachment(f"k{ESC}", "link", 9, None, ""), f"k{ESC_SHOWN}"),
]


@pytest.mark.parametrize(("attachment", "text"), HOSTILE)
def test_hostile_names_are_escaped(attachment: Attachment, text: str) -> None:
    assert short_form(attachment) == text
    shown = attached_text(program(1, attachments=(attachment, attachment)))
    assert shown == f"{text} +1" and "\x1b" not in shown and "\u202e" not in shown


def test_long_targets_are_cut_and_keep_the_plus_n() -> None:
    long = Attachment("raw_tracepoint", "link", 9, None, "x" * 300)
    wide = Attachment("raw_tracepoint", "link", 9, None, "\u6f22" * 300)  # two columns each
    for a in (long, wide):
        text = attached_text(program(1, attachments=(a, a, a)))
        assert text.endswith("~ +2"), text
        assert display_width(text) <= SHORT_MAX + len(" +2")


def test_the_table_has_an_attached_column_dropped_before_process() -> None:
    history = snapshots(
        [
            [
                program(1, "on_eth0", attachments=(KINDS[4][0], KINDS[6][0])),
                program(2, "evil", attachments=(HOSTILE[0][0],)),
                program(3, "nowhere", attachments=()),
            ]
        ]
    )
    lines = render(history, 160)[0]
    header = column_header(lines)
    assert header.rstrip().endswith("Process  Attached") or "Attached" in header
    assert header.index("Attached") > header.index("Process")
    assert all(len(t) == 160 for t in texts(lines))
    assert row_of(lines, "on_eth0").rstrip().endswith("tc eth0 in +1")
    assert row_of(lines, " evil ").rstrip().endswith(f"xdp {ESC_SHOWN}")
    assert row_of(lines, "nowhere").rstrip().endswith(" -")
    assert not any("\x1b" in t for t in texts(lines))
    # Dropped on narrow terminals after Total Avg and Type, before Process.
    assert DROP_ORDER.index(Column.ATTACHED) < DROP_ORDER.index(Column.PROCESS)
    assert LABELS[Column.ATTACHED] == ("Attached",)
    narrow = column_header(render(history, 50)[0])
    assert "Attached" not in narrow and "Process" in narrow


def test_the_detail_lists_every_attachment_with_its_fields() -> None:
    attachments = (
        KINDS[6][0],
        CONTAINER_CG,
        KINDS[2][0],
        KINDS[4][0],
        socket(812, 5, "python3"),
        Attachment("netfilter", "link", 18, "netfilter", "ipv4 input", priority=-128),
    )
    history = snapshots([[program(5, "p", attachments=attachments)]])
    detail = ViewState(mode=Mode.DETAIL, detail_id=5)
    body = texts(render(history, 400, 40, detail)[0])
    at = body.index(next(t for t in body if t.startswith("Attached:")))
    assert [t.rstrip() for t in body[at : at + 7]] == [
        "Attached: 6",
        "  tcx via link 3 type tcx_egress ifindex 2 direction egress target eth0",
        "  cgroup via link 7 type cgroup_inet_egress container c0ffee012345"
        f" pod {POD} qos besteffort target {SCOPE}",
        f"  xdp via netlink ifindex 2 ifname eth0 netns {NETNS} mode skb target eth0@netns:{NETNS}",
        "  tc via netlink type tc_ingress ifindex 2 direction ingress priority 1 target eth0",
        "  socket via socket pid 812 fd 5 process python3 target pid 812 fd 5",
        "  netfilter via link 18 priority -128 target ipv4 input",
    ]


def test_the_detail_shows_how_a_cgroup_takes_programs_attached_without_a_link() -> None:
    # BPF_PROG_ATTACH's flags, as --json's attach_flags: several programs (multi), one a
    # program below replaces (override), or the only one (no flags).
    multi, override, alone = (
        replace(CONTAINER_CG, via="prog_attach", link_id=None, attach_flags=flags)
        for flags in ("multi", "override", None)
    )
    head = "cgroup via prog_attach type cgroup_inet_egress"
    where = f"container c0ffee012345 pod {POD} qos besteffort target {SCOPE}"
    assert detail_lines((multi, override, alone), 5) == [
        "Attached: 3",
        f"  {head} flags multi {where}",
        f"  {head} flags override {where}",
        f"  {head} {where}",
    ]
    # Hostile text in the flags is escaped like every field.
    (_, line) = detail_lines((replace(multi, attach_flags=ESC),), 5)
    assert f" flags {ESC_SHOWN} " in line and "\x1b" not in line


def test_a_long_target_keeps_its_end_in_the_detail() -> None:
    history = snapshots([[program(5, "p", attachments=(CONTAINER_CG,))]])
    detail = ViewState(mode=Mode.DETAIL, detail_id=5)
    lines = texts(render(history, 160, 30, detail)[0])
    head = (
        f"  cgroup via link 7 type cgroup_inet_egress container c0ffee012345 pod {POD}"
        " qos besteffort target ~"
    )
    line = next(t for t in lines if t.startswith("  cgroup via"))
    assert line == head + SCOPE[-(160 - len(head)) :]
    assert len(line) == 160 and line.endswith(f"{CONTAINER[-20:]}.scope")
    # Wide characters: never wider than the line, and the end kept.
    wide = Attachment("raw_tracepoint", "link", 9, None, "\u6f22" * 100 + "end")
    (_, text) = detail_lines((wide,), 5, 42)
    assert display_width(text) <= 42 and text.endswith("~\u6f22end")
    assert text.startswith("  raw_tracepoint via link 9 target ~")


def test_a_long_list_is_cut_to_the_rows_there_are_with_plus_n_more() -> None:
    many = tuple(
        Attachment("cgroup", "prog_attach", None, "cgroup_device", f"/sys/fs/cgroup/c{i}")
        for i in range(40)
    )
    history = snapshots([[program(5, "p", attachments=many)]])
    detail = ViewState(mode=Mode.DETAIL, detail_id=5)
    for height in (12, 24, 40):
        lines = texts(render(history, 100, height, detail)[0])
        assert len(lines) == height and all(len(t) == 100 for t in lines)
        listed = [t for t in lines if t.startswith("  cgroup via prog_attach")]
        more = [t.strip() for t in lines if t.strip().endswith(" more")]
        assert more == [f"+{40 - len(listed)} more"], (height, lines)
        assert listed, height
    # Charts still have room: the list takes at most half of what is left.
    assert "Avg runtime (ns)" in "\n".join(lines)
    assert detail_lines(many, 3) == [
        "Attached: 40",
        "  cgroup via prog_attach type cgroup_device target /sys/fs/cgroup/c0",
        "  +39 more",
    ]
    assert detail_lines(many[:2], 3) == [
        "Attached: 2",
        "  cgroup via prog_attach type cgroup_device target /sys/fs/cgroup/c0",
        "  cgroup via prog_attach type cgroup_device target /sys/fs/cgroup/c1",
    ]
    assert detail_lines((), 5) == ["Attached: nowhere found"]
    assert detail_lines(None, 5) == ["Attached: not looked up"]


def test_the_detail_escapes_hostile_attachment_text() -> None:
    evil = (
        Attachment(ESC, ESC, 1, f"t{ESC}", ESC, ifname=f"i{ESC}", direction=ESC, mode=ESC),
        socket(1, 3, ESC),
    )
    history = snapshots([[program(5, "p", attachments=evil)]])
    detail = ViewState(mode=Mode.DETAIL, detail_id=5)
    body = "\n".join(texts(render(history, 250, 40, detail)[0]))
    assert "\x1b" not in body and "\x07" not in body
    assert (
        f"  {ESC_SHOWN} via {ESC_SHOWN} link 1 type t{ESC_SHOWN} ifname i{ESC_SHOWN}"
        f" direction {ESC_SHOWN} mode {ESC_SHOWN} target {ESC_SHOWN}"
    ) in body
    assert f"process {ESC_SHOWN} target pid 1 fd 3" in body


def test_the_filter_matches_attach_targets_and_interfaces() -> None:
    other_ns = KINDS[2][0]  # eth0 in another namespace: the target says so, ifname is eth0
    snap = snapshots(
        [
            [
                program(1, "a", attachments=(KINDS[0][0],)),
                program(2, "b", attachments=(other_ns,)),
                program(3, "c", attachments=(replace(KINDS[6][0], target="eth1", ifname="eth1"),)),
                program(4, "d", attachments=(CONTAINER_CG,)),
                program(5, "e", attachments=(KINDS[0][0], socket(812, 5, "python3"))),
                program(6, "f", attachments=None),
                program(7, "g", attachments=()),
                program(8, "h", attachments=(HOSTILE[0][0],)),
            ]
        ]
    )[0]

    def shown(text: str) -> list[int]:
        return [s.id for s in visible_rows(snap.programs, ViewState(filter_text=text))]

    assert shown("eth0") == [1, 2, 5]  # the programs on eth0, in any namespace
    assert shown("ETH1") == [3]
    assert shown(f"netns:{NETNS}") == [2]
    assert shown("c0ffee01234") == [4]  # the cgroup path names the container
    assert shown(POD_SLICE[:30]) == [4]
    assert shown("python3(812)") == [5]  # a socket's process, as the column shows it
    assert shown("tcx eth1 out") == [3]  # the column's text
    assert shown("\x1b[2j") == [8] and shown("\\x1b[2j") == [8]  # raw and as shown
    assert shown("nowhere-at-all") == []


def test_help_and_footer_say_the_filter_matches_attach_points() -> None:
    help_text = "\n".join(
        texts(render(snapshots([[program(1)]]), 100, 40, ViewState(mode=Mode.HELP))[0])
    )
    assert "filter by name, type, process or attach point" in help_text
    assert "eth0 shows the programs on eth0" in help_text
    filtering = "\n".join(
        texts(render(snapshots([[program(1)]]), 120, 24, ViewState(mode=Mode.FILTER))[0])
    )
    assert "filter name/type/process/attach point" in filtering


def test_the_live_view_asks_for_attachments() -> None:
    from otel_bpf.cli import args as cli_args
    from otel_bpf.cli.config import resolve
    from otel_bpf.cli.main import _source_options
    from otel_bpf.otel.options import MetricsOptions

    live = resolve(cli_args.parse_args(["--live"]), {})
    assert not live.attachments and _source_options(live, MetricsOptions()).attachments


def test_the_filter_follows_attachments_that_change() -> None:
    # The filter keeps each program's attachment text between frames: a program moved from
    # eth0 to eth1 (same id) must be found by eth1 and no longer by eth0.
    on_eth0 = KINDS[0][0]
    on_eth1 = replace(on_eth0, target="eth1", ifname="eth1")
    first, second, third = snapshots(
        [
            [program(1, "a", attachments=(on_eth0,))],
            [program(1, "a", attachments=(on_eth1,))],
            [program(1, "a", attachments=())],
        ]
    )

    def shown(snap: Snapshot, text: str) -> list[int]:
        return [s.id for s in visible_rows(snap.programs, ViewState(filter_text=text))]

    assert shown(first, "eth0") == [1] and shown(first, "eth1") == []
    assert shown(second, "eth0") == [] and shown(second, "eth1") == [1]
    assert shown(first, "eth0") == [1]  # equal again: the older reading still matches
    assert shown(third, "eth0") == [] and shown(third, "eth1") == []


@pytest.mark.parametrize("mode", [Mode.TABLE, Mode.DETAIL, Mode.FILTER])
def test_any_size_renders_exact_lines_with_attachments(mode: Mode) -> None:
    many = tuple(a for a, _ in KINDS) + tuple(a for a, _ in HOSTILE)
    history = snapshots(
        [[program(5, "p", attachments=many), program(6, "q", attachments=many[:1])]] * 2
    )
    state = ViewState(mode=mode, detail_id=5, filter_text="eth")
    for width in (1, 10, 20, 40, 80, 200):
        for height in (1, 3, 5, 10, 24, 50):
            lines = texts(render(history, width, height, state)[0])
            assert len(lines) == height, (width, height)
            assert all(display_width(t) == width for t in lines), (width, height)
            assert not any("\x1b" in t for t in lines)
