"""``python -m cccdask``: the command line."""

from cccdask.cli import app

app(prog_name="cccdask")
