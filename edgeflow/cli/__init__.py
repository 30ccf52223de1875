"""The ``edgeflow`` command line (typer): one module per command group."""
