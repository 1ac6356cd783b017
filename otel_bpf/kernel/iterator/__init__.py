"""Sampling through BPF iterators: every program's counters, and their owners, in a few reads.

``iter/bpf_prog`` (Linux 5.9) runs a small program of ours once per loaded BPF program; it
writes a fixed-size record per program into a seq_file that we read to EOF.  ``iter/task_file``
(5.8) does the same per open file of every task, which maps programs to the processes holding
them.  The syscall path (``otel_bpf.kernel.programs``) stays the reference and the fallback:
:func:`otel_bpf.kernel.open_source.open_source` picks one of the two at start-up.
"""
