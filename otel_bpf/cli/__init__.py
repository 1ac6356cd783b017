"""The ``bpftop-otel`` command: arguments, configuration, exporters and output formats.

``main.main()`` is the console script.  The other modules each do one job: ``args`` parses
and validates the command line, ``config`` merges it with the ``OTEL_*`` environment,
``exporters`` builds the meter provider, ``jsonl`` formats ``--json`` output, ``logs`` sets
up logging (including the one-line-per-failure-burst export log), ``signals`` turns
SIGTERM/SIGINT into an orderly shutdown.
"""

from __future__ import annotations
