"""A LlamaIndex query engine that stuffs every retrieved node into one prompt for an ``SRALLM``.

No node is dropped and there is no refine loop: the nodes are deduplicated, ordered and numbered by
:func:`sra_rag.rag.stuffing.stuff_prompt`, and the LLM is told where the question starts so that
Scaled ReAttention's tail covers exactly the question and instruction. ::

    from llama_index.llms.sra import SRALLM
    from llama_index.llms.sra.query_engine import SRAQueryEngine

    engine = SRAQueryEngine(retriever=index.as_retriever(similarity_top_k=8), llm=SRALLM(), streaming=True)
    response = engine.query("Who approves leave in October?")
    response.print_response_stream()
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response, StreamingResponse
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.llms.sra.base import SRALLM
from pydantic import Field

from sra_rag import SRAConfig
from sra_rag.rag.citing import CiteMode, finish_answer
from sra_rag.rag.ordering import Placement, prepare_stuffed_prompt
from sra_rag.rag.reader import DEFAULT_STOP
from sra_rag.rag.stuffing import SOURCE_KEYS, TITLE_KEYS, Chunk, OverflowPolicy, StuffedPrompt, first_metadata


def node_to_chunk(node: NodeWithScore) -> Chunk:
    """The :class:`~sra_rag.rag.stuffing.Chunk` for a retrieved node (source and title from its
    metadata; source else its document or node id)."""
    metadata = node.node.metadata or {}
    source = first_metadata(metadata, SOURCE_KEYS)
    title = first_metadata(metadata, TITLE_KEYS)
    index = metadata.get("chunk_index")
    return Chunk(
        text=node.node.get_content(),
        source=source or node.node.ref_doc_id or node.node.node_id,
        chunk_index=int(index) if index is not None else None,
        score=node.score,
        id=node.node.node_id,
        title=title,
    )


class SRAQueryEngine(CustomQueryEngine):
    """Retrieve with ``retriever``, stuff all nodes into one prompt and answer with ``llm`` (an
    ``SRALLM``); ``streaming=True`` returns a ``StreamingResponse``.

    ``overflow``: ``"error"`` (raise with the token counts) or ``"drop"`` (leave out the
    lowest-ranked nodes with a warning) when the nodes do not fit; ``sra``: SRA settings for these
    calls (default: the LLM's; with ``tail="question"``, as in ``recommended``, the SRA tail covers
    exactly the question and instruction: the prompt's layout goes with every call); ``stop``:
    stop sequences added to the LLM's (by default a new "Question:" line).
    ``order``: attention-ordered stuffing (``"first"``, ``"last"`` or ``"ends"``; see
    :mod:`sra_rag.rag.ordering`): one readout prefill ranks the sources by how much the question read
    them and the prompt is stuffed again with the most-read there (about 2x prefill; nothing dropped).
    ``source_nodes`` of the response are the nodes in the prompt, in prompt order; its
    ``metadata`` holds ``sources`` (``[1]`` first), ``dropped`` (node ids) and ``prompt_tokens``,
    and (not streaming) ``source_attention``: one score per source, higher = the question read it
    more, with ``source_attention_calibrated``. ``attribute`` (not streaming): after the answer, one
    read-only pass scores how much the answer's own tokens read each source, as ``answer_attention``
    in the metadata (see ``sra_rag.rag.reader.Reader``). ``cite``: when the model ends an answer that
    cites no source by number, ``" (Document [n])"`` is appended, ``n`` the source the answer read
    most (``"attention"``, the default; the ``attribute`` pass, shared) or the number the model
    writes (``"model"``); None leaves the answer as written (see :mod:`sra_rag.rag.citing`).
    ``group_by_source``: every node is its own numbered document at its retrieved rank (the default),
    or the nodes of one source form one document at its best rank (True).
    """

    retriever: BaseRetriever
    llm: SRALLM
    max_new_tokens: int | None = Field(default=None, description="Default: the LLM's max_new_tokens.")
    overflow: OverflowPolicy = "error"
    sra: SRAConfig | None = None
    system_prompt: str | None = None
    stop: list[str] = Field(default_factory=lambda: list(DEFAULT_STOP), description="Added to the LLM's stops.")
    streaming: bool = False
    order: Placement | None = None
    attribute: bool = False
    cite: CiteMode | None = "attention"
    group_by_source: bool = False

    def custom_query(self, query_str: str) -> RESPONSE_TYPE:
        nodes = self.retriever.retrieve(QueryBundle(query_str))
        stuffed, by_id = self._stuff(query_str, nodes)
        messages = [ChatMessage(role=message["role"], content=message["content"]) for message in stuffed.messages]
        kwargs = self._call_kwargs(stuffed)
        source_nodes = [by_id[chunk.id] for chunk in stuffed.chunks if chunk.id in by_id]
        metadata = {
            "sources": stuffed.sources,
            "dropped": [chunk.id for chunk in stuffed.dropped],
            "prompt_tokens": stuffed.prompt_tokens,
        }
        sra = self.sra if self.sra is not None else self.llm.sra_config
        if self.streaming:
            return StreamingResponse(
                self._pieces(stuffed, messages, kwargs, sra), source_nodes=source_nodes, metadata=metadata
            )
        response = self.llm.chat(messages, **kwargs)
        attention = (response.raw or {}).get("document_attention")
        if attention is not None:
            metadata["source_attention"] = attention["scores"]
            metadata["source_attention_calibrated"] = attention["calibrated"]
        text = response.message.content or ""
        finish_reason = (response.raw or {}).get("finish_reason")
        citation, scores = finish_answer(
            self.llm.engine, stuffed, text, finish_reason, sra, cite=self.cite, attribute=self.attribute
        )
        if scores is not None:
            metadata["answer_attention"] = scores
        return Response(text + citation, source_nodes=source_nodes, metadata=metadata)

    def _pieces(
        self, stuffed: StuffedPrompt, messages: list[ChatMessage], kwargs: dict[str, Any], sra: SRAConfig
    ) -> Iterator[str]:
        """The answer's text pieces, then the citation ``cite`` appends."""
        pieces, finish_reason = [], None
        for chunk in self.llm.stream_chat(messages, **kwargs):
            # The LLM's last response only carries the final token counts and why it ended (an empty delta).
            finish_reason = (chunk.raw or {}).get("finish_reason", finish_reason)
            if chunk.delta:
                pieces.append(chunk.delta)
                yield chunk.delta
        # A stream reports no answer_attention, so only the citation is asked for.
        citation, _ = finish_answer(self.llm.engine, stuffed, "".join(pieces), finish_reason, sra, cite=self.cite)
        if citation:
            yield citation

    async def acustom_query(self, query_str: str) -> RESPONSE_TYPE:
        # Retrieval, tokenising and generation block for seconds; keep them off the event loop.
        return await asyncio.to_thread(self.custom_query, query_str)

    def _stuff(self, query_str: str, nodes: list[NodeWithScore]) -> tuple[StuffedPrompt, dict[str, NodeWithScore]]:
        if not nodes:
            raise ValueError("The retriever returned no nodes: the index is empty or nothing matched.")
        by_id = {node.node.node_id: node for node in nodes}
        stuffed = prepare_stuffed_prompt(
            self.llm.engine,
            query_str,
            [node_to_chunk(node) for node in nodes],
            max_new_tokens=self._max_new_tokens(),
            overflow=self.overflow,
            system_prompt=self.system_prompt,
            group_by_source=self.group_by_source,
            order=self.order,
            sra=self.sra if self.sra is not None else self.llm.sra_config,
        )
        return stuffed, by_id

    def _max_new_tokens(self) -> int:
        return int(self.max_new_tokens or self.llm.max_new_tokens)

    def _call_kwargs(self, stuffed: StuffedPrompt) -> dict[str, Any]:
        stop = [*(self.llm.stop or []), *self.stop]
        kwargs: dict[str, Any] = {
            **self.llm.answer_settings(),
            "max_new_tokens": self._max_new_tokens(),
            "stop": stop,
            "layout": stuffed.layout,
        }
        if self.sra is not None:
            kwargs["sra"] = self.sra
        return kwargs


class ChunkRetriever(BaseRetriever):
    """A LlamaIndex retriever over any sra-rag retriever (an object with ``retrieve(question,
    top_k) -> list[Chunk]``, such as :class:`sra_rag.rag.store.ChromaStore`)."""

    def __init__(self, store: Any, top_k: int = 8, **kwargs: Any) -> None:
        if not callable(getattr(store, "retrieve", None)):
            raise TypeError(f"store must have a retrieve(question, top_k) method, got {type(store).__name__}")
        super().__init__(**kwargs)
        self.store = store
        self.top_k = top_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [
            NodeWithScore(
                node=TextNode(
                    text=chunk.text,
                    id_=chunk.id or f"{chunk.source}#{chunk.chunk_index}",
                    metadata={"source": chunk.source, "chunk_index": chunk.chunk_index}
                    | ({"title": chunk.title} if chunk.title else {}),
                ),
                score=chunk.score,
            )
            for chunk in self.store.retrieve(query_bundle.query_str, self.top_k)
        ]
