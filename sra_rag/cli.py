"""The ``sra-rag`` command line. Each concern keeps its commands in its own module (a Typer app
named ``app``); this module gathers them and holds the options they share."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

COMMAND_MODULES = ("sra_rag.rag.commands", "sra_rag.evaluation.commands", "sra_rag.server.commands")

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


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="sra-rag",
        help="Retrieval-augmented generation that stuffs the whole retrieved context into one prompt, "
        "with Scaled ReAttention.",
        no_args_is_help=True,
        add_completion=False,
    )
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        app.registered_commands.extend(module.app.registered_commands)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
