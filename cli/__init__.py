"""The ``resablate`` command line: a thin Typer shell (installed as resablate_cli)."""
