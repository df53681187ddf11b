"""Citations of the numbered sources: which ones an answer cites, and the model's own pick when it cites none.

The reader's prompt numbers the sources ("Document [1]", ...) and asks the model to name the one it
used. Qwen2.5-Coder-0.5B does in most replies; SmolLM2-135M answers without a number. For an answer
that cites no source of the prompt, :func:`cite_answer` asks the model which one: the answer is
followed by :data:`CITE_PREFIX` and the model picks a source number by constrained decoding
(:meth:`~sra_rag.SRAEngine.choose`: one prefill of the prompt with the answer, then a token or two),
which gives the suffix ``" (Document [n])"``. The pick is the model's, not the readout's; measured in
``docs/eval/attribution`` (the prefix was chosen on seed 7 among five wordings, reported on seed 11).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sra_rag.config import SRAConfig
    from sra_rag.engine import SRAEngine
    from sra_rag.rag.stuffing import StuffedPrompt

CITE_PREFIX = " (Document ["
"""What follows an answer that cites no source, before the model's pick of a number and ``"])"``."""

_GROUP = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def cited_numbers(text: str, count: int | None = None) -> list[int]:
    """Source numbers cited as ``[1]``, ``[1, 3]`` or ``[1][2]`` in ``text``, in order of first
    citation; with ``count``, only those of a prompt with ``count`` sources (1..count)."""
    numbers = [int(number) for group in _GROUP.findall(text) for number in re.split(r"[,;]", group)]
    valid = [n for n in numbers if count is None or 1 <= n <= count]
    return list(dict.fromkeys(valid))


def cite_answer(engine: SRAEngine, stuffed: StuffedPrompt, text: str, sra: SRAConfig | None = None) -> str | None:
    """The citation to append to the answer ``text`` to the prompt ``stuffed``: ``" (Document [n])"``
    with the source number ``n`` the model picks after :data:`CITE_PREFIX`; None when the answer
    already cites a source of the prompt or is empty. What ``Reader(cite=True)`` appends."""
    count = len(stuffed.sources)
    if not text.strip() or count == 0 or cited_numbers(text, count):
        return None
    options = [f"{number}])" for number in range(1, count + 1)]
    reply = text.rstrip() + CITE_PREFIX
    chosen = engine.choose(stuffed.messages, options, reply=reply, layout=stuffed.layout, sra=sra)
    return f"{CITE_PREFIX}{options[chosen]}"
