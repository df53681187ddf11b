"""The ``sra-rag`` command line. Each concern keeps its commands in its own module (a Typer app
named ``app``); this module gathers them, holds the options they share, and is the one error
boundary of every command: an error ends the command with one line on stderr and a non-zero exit
code, never a traceback (``SRA_RAG_DEBUG=1`` shows it)."""

from __future__ import annotations

import copy
import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import click
import typer
from typer.exceptions import TyperException

COMMAND_MODULES = ("sra_rag.rag.commands", "sra_rag.evaluation.commands", "sra_rag.server.commands")
DEBUG_ENV = "SRA_RAG_DEBUG"

# The keys are those of sra_rag.models.PACKAGED_MODELS (not imported here: it loads torch, and
# --help stays fast).
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Hub id (from the local cache), folder, .gguf file, or a model installed from PyPI: "
        "smollm2-135m (the default) or qwen2.5-coder-0.5b.",
    ),
]

Command = TypeVar("Command", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    """End the command: ``Error: <message>`` on one line of stderr and exit code ``code``."""
    typer.secho(f"Error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def describe(error: BaseException) -> str:
    """One line that says what went wrong. Errors a user can act on (bad settings, missing or damaged
    files and stores, a prompt that does not fit) are their own message; anything else is named by
    its type, with how to see the traceback."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        problems = []
        for item in error.errors(include_url=False):
            where = ".".join(str(part) for part in item["loc"]) or error.title
            problems.append(f"{where}: {item['msg']} (got {item.get('input')!r})")
        return f"Invalid {error.title} settings: " + "; ".join(problems)
    message = " ".join(str(error).split())
    if isinstance(error, (ValueError, TypeError, LookupError, OSError, ImportError, RuntimeError)) and message:
        if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
            message = f"{error.filename}: {message}"
        return message
    return f"{type(error).__name__}: {message or 'no message'} (unexpected; run with {DEBUG_ENV}=1 for the traceback)"


def error_boundary(command: Command) -> Command:
    """Wrap a command so that any error ends it as :func:`fail` does; Ctrl-C exits with code 130."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException, click.exceptions.Exit, click.ClickException):
            raise  # exits, aborts and usage errors that typer itself reports
        except KeyboardInterrupt:
            fail("Interrupted. Run the same command again to continue: ingestion keeps what it stored.", code=130)
        except Exception as error:
            if os.environ.get(DEBUG_ENV):
                raise
            fail(describe(error))

    return run  # type: ignore[return-value]


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="sra-rag",
        help="Retrieval-augmented generation that stuffs the whole retrieved context into one prompt, "
        "with Scaled ReAttention.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in module.app.registered_commands:
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
