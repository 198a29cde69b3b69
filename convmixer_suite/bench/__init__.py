"""Measuring and showing runs: the HTML reports of an evaluation, of two evaluations side by side, and of the
benchmark (``html_report``; the ``convmixer-report`` command is convmixer_suite.commands.report)."""
