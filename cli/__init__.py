"""The ``resablate`` command line: a thin Typer shell over the library (installed as resablate_cli)."""
