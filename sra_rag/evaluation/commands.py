"""Command-line commands of this subpackage (gathered by ``sra_rag.cli``)."""

import typer

app = typer.Typer()
