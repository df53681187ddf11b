"""A LangChain chain that stuffs every retrieved document into one prompt for ``ChatSRA``.

No document is dropped and there is no refine loop: documents are deduplicated, ordered and
numbered by :func:`sra_rag.rag.stuffing.stuff_prompt`, and the chat model is told where the question
starts so that Scaled ReAttention's tail covers exactly the question and instruction. The chain has
the input and output shape of LangChain's ``create_retrieval_chain``::

    from langchain_sra import ChatSRA
    from langchain_sra.chains import create_stuffed_rag_chain

    chain = create_stuffed_rag_chain(retriever, ChatSRA())
    result = chain.invoke({"input": "Who approves leave in October?"})
    result["answer"], result["sources"]          # sources[0] is [1] in the answer
    for chunk in chain.stream({"input": "..."}):  # {"answer": "..."} pieces stream in
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda
from langchain_core.runnables.utils import AddableDict

from langchain_sra.chat_models import ChatSRA
from sra_rag import SRAConfig
from sra_rag.config import Order
from sra_rag.rag.citing import CiteMode, check_cite, finish_answer
from sra_rag.rag.ordering import prepare_stuffed_prompt, resolve_order
from sra_rag.rag.reader import DEFAULT_STOP
from sra_rag.rag.stuffing import OVERFLOW_POLICIES, SOURCE_KEYS, TITLE_KEYS, Chunk, OverflowPolicy, first_metadata


def document_to_chunk(document: Document, rank: int) -> Chunk:
    """The :class:`~sra_rag.rag.stuffing.Chunk` for a retrieved document (source and title from its
    metadata; source else ``document <rank>``)."""
    metadata = document.metadata or {}
    source = first_metadata(metadata, SOURCE_KEYS) or f"document {rank + 1}"
    title = first_metadata(metadata, TITLE_KEYS)
    index = metadata.get("chunk_index")
    score = metadata.get("score")
    return Chunk(
        text=document.page_content,
        source=source,
        chunk_index=int(index) if index is not None else None,
        score=float(score) if score is not None else None,
        id=document.id or metadata.get("id") or f"rank-{rank}",
        title=title,
    )


def create_stuffed_rag_chain(
    retriever: Runnable[str, list[Document]],
    chat_model: ChatSRA,
    *,
    max_new_tokens: int | None = None,
    overflow: OverflowPolicy = "error",
    sra: SRAConfig | None = None,
    system_prompt: str | None = None,
    stop: Sequence[str] = DEFAULT_STOP,
    order: Order | None = None,
    attribute: bool = False,
    cite: CiteMode | None = "attention",
    group_by_source: bool = False,
) -> Runnable[dict[str, Any] | str, dict[str, Any]]:
    """A runnable: ``{"input": question}`` (or the question as a string) in; out a dict with
    ``input``, ``context`` (the documents in prompt order), ``answer``, ``sources`` (``sources[0]``
    is ``[1]``), ``dropped`` (documents left out, only with ``overflow="drop"``),
    ``prompt_tokens`` and ``source_attention`` (one score per source, higher = the question read it
    more, with ``source_attention_calibrated``).

    ``chat_model`` must be a ``ChatSRA`` (its ``engine`` counts the tokens); ``max_new_tokens``
    defaults to the model's. ``overflow="error"`` raises with the token counts when the documents do
    not fit; ``"drop"`` leaves out the lowest-ranked with a warning. ``sra``: SRA settings for these
    calls (with ``tail="question"``, as in ``recommended``, the SRA tail covers exactly the question
    and instruction: the prompt's layout goes with every call). ``stop``:
    stop sequences added to the model's (by default a new "Question:" line). ``order``:
    attention-ordered stuffing (``"first"``, ``"last"`` or ``"ends"``; see :mod:`sra_rag.rag.ordering`):
    one readout prefill ranks the sources by how much the question read them and the prompt is
    stuffed again with the most-read there (about 2x prefill; nothing dropped); ``"retrieved"`` keeps
    the retriever's order; None is the model's default (``engine.defaults.order``). ``attribute``: after the
    answer, one read-only pass scores how much the answer's own tokens read each source, output last
    as ``answer_attention`` (see ``sra_rag.rag.reader.Reader``). ``cite``: when the model ends an
    answer that cites no source by number, ``" (Document [n])"`` streams last in ``answer``, ``n`` the
    source the answer read most (``"attention"``, the default; the ``attribute`` pass, shared) or the
    number the model writes (``"model"``); None leaves the answer as written (see
    :mod:`sra_rag.rag.citing`). ``group_by_source``: every document is its own numbered block at its
    retrieved rank (the default), or the documents of one source form one block at its best rank.
    """
    engine = getattr(chat_model, "engine", None)
    if engine is None or not callable(getattr(engine, "count_tokens", None)):
        raise TypeError(f"chat_model must be a ChatSRA with an SRAEngine, got {type(chat_model).__name__}")
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
    placement = resolve_order(order, engine.defaults.order)
    if not isinstance(attribute, bool):
        raise TypeError(f"attribute must be True or False, got {attribute!r}")
    if not isinstance(group_by_source, bool):
        raise TypeError(f"group_by_source must be True or False, got {group_by_source!r}")
    check_cite(cite)
    new_tokens = int(max_new_tokens or chat_model.max_new_tokens)
    stops = [*(getattr(chat_model, "stop", None) or []), *stop]

    def prepare(inputs: dict[str, Any] | str) -> dict[str, Any]:
        question = inputs if isinstance(inputs, str) else inputs.get("input")
        if not isinstance(question, str) or not question.strip():
            raise ValueError('Pass the question as a string or as {"input": question}.')
        documents = retriever.invoke(question)
        if not documents:
            raise ValueError("The retriever returned no documents: the store is empty or nothing matched.")
        chunks = [document_to_chunk(document, rank) for rank, document in enumerate(documents)]
        by_chunk = dict(zip(chunks, documents, strict=True))
        stuffed = prepare_stuffed_prompt(
            engine,
            question,
            chunks,
            max_new_tokens=new_tokens,
            overflow=overflow,
            system_prompt=system_prompt,
            group_by_source=group_by_source,
            order=placement,
            sra=sra if sra is not None else chat_model.sra_config,
        )
        call: dict[str, Any] = {
            **chat_model.answer_settings(),
            "max_new_tokens": new_tokens,
            "stop": stops,
            "layout": stuffed.layout,
        }
        if sra is not None:
            call["sra"] = sra
        return {
            "input": question,
            "context": [by_chunk[chunk] for chunk in stuffed.chunks],
            "sources": stuffed.sources,
            "dropped": [by_chunk[chunk] for chunk in stuffed.dropped],
            "prompt_tokens": stuffed.prompt_tokens,
            "messages": _to_messages(stuffed.messages),
            "call": call,
            "stuffed": stuffed,
        }

    def answer(state: dict[str, Any]) -> Runnable[dict[str, Any], BaseMessage]:
        # Returning a runnable lets LangChain stream it; the bound keywords are this call's settings.
        return itemgetter("messages") | chat_model.bind(**state["call"])

    def public(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        # A generator, so that the answer's pieces stream through instead of being collected; the
        # model's messages become the answer's text and, from the last one, the source attention.
        stuffed, pieces, finish_reason = None, [], None
        for chunk in chunks:
            stuffed = chunk.get("stuffed", stuffed)
            hidden = {"messages", "call", "message", "stuffed"}
            visible = {key: value for key, value in chunk.items() if key not in hidden}
            message = chunk.get("message")
            if isinstance(message, BaseMessage):
                if message.text:
                    visible["answer"] = message.text
                    pieces.append(message.text)
                finish_reason = message.response_metadata.get("finish_reason", finish_reason)
                attention = message.response_metadata.get("document_attention")
                if attention is not None:
                    visible["source_attention"] = attention["scores"]
                    visible["source_attention_calibrated"] = attention["calibrated"]
            if visible:
                yield visible
        if stuffed is None or (cite is None and not attribute):
            return
        config = sra if sra is not None else chat_model.sra_config
        text = "".join(pieces)
        citation, scores = finish_answer(engine, stuffed, text, finish_reason, config, cite=cite, attribute=attribute)
        if citation:
            yield AddableDict(answer=citation)
        if scores is not None:
            yield AddableDict(answer_attention=scores)

    chain = RunnableLambda(prepare).assign(message=RunnableLambda(answer)) | RunnableGenerator(public)
    return chain.with_config(run_name="stuffed_rag_chain")


class ChunkRetriever(BaseRetriever):
    """A LangChain retriever over any sra-rag retriever (an object with ``retrieve(question,
    top_k) -> list[Chunk]``, such as :class:`sra_rag.rag.store.ChromaStore`)."""

    store: Any
    top_k: int = 8

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(
                page_content=chunk.text,
                id=chunk.id,
                metadata={"source": chunk.source, "chunk_index": chunk.chunk_index, "score": chunk.score}
                | ({"title": chunk.title} if chunk.title else {}),
            )
            for chunk in self.store.retrieve(query, self.top_k)
        ]


def _to_messages(messages: list[dict[str, str]]) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage}
    return [kinds[message["role"]](content=message["content"]) for message in messages]
