"""`python -m siesta` is the `siesta` command."""

from siesta.cli import app

app()
