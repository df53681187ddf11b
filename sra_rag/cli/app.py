"""The ``sra-rag`` command line: the commands of each concern (:mod:`sra_rag.cli.rag`,
:mod:`sra_rag.cli.evaluation`, :mod:`sra_rag.cli.serve`, each a Typer app named ``app``) gathered
into one app, every command behind the error boundary of :mod:`sra_rag.cli.common`."""

from __future__ import annotations

import copy
import sys

import typer

from sra_rag.cli import evaluation, rag, serve
from sra_rag.cli.common import error_boundary

COMMAND_APPS = (rag.app, evaluation.app, serve.app)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="sra-rag",
        help="Retrieval-augmented generation that stuffs the whole retrieved context into one prompt, "
        "with Scaled ReAttention.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for commands in COMMAND_APPS:
        for command in commands.registered_commands:
            wrapped = copy.copy(command)
            if command.callback is not None:
                wrapped.callback = error_boundary(command.callback)
            app.registered_commands.append(wrapped)
    return app


def main() -> None:
    try:
        build_app()()
    except KeyboardInterrupt:
        typer.secho("Error: Interrupted.", fg=typer.colors.RED, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
