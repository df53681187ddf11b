"""What every command shares: the ``--model`` option, :func:`fail`, and the error boundary that ends
a command on an error with one line on stderr and a non-zero exit code, never a traceback
(``SRA_RAG_DEBUG=1`` shows it)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import click
import typer
from typer.exceptions import TyperException

DEBUG_ENV = "SRA_RAG_DEBUG"

# The keys are those of sra_rag.models.PACKAGED_MODELS (not imported here: it loads torch, and
# --help stays fast).
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Hub id (from the local cache), folder, .gguf file, or a model installed from PyPI: "
        "qwen2.5-coder-0.5b (the default; $SRA_RAG_MODEL names another) or smollm2-135m (small and fast).",
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
