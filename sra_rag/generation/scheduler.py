"""Continuous batching, the policy: one worker thread runs every request of an engine in shared
forward passes, which the :class:`~sra_rag.generation.runner.ModelRunner` makes.

Between two decoding steps, finished and cancelled requests leave the running batch and waiting
ones join it. A joining group is prefilled first (several prompts together, left-padded, each with
its own SRA settings and layout), then its KV cache is left-padded to the running batch's length and
concatenated onto it; every decoding step then feeds one token per row with its own attention-mask
row and position id. Decoding steps
are ordinary attention (SRA edits only the prefill), so a request's tokens are the same alone and
in a batch, up to float rounding.

Models whose cache layers are not plain ``DynamicLayer`` s (sliding windows, ...) cannot be padded
and concatenated this way; their requests still run concurrently, each in a batch of its own. A
prefilled group whose joining would add much padding (a long document among short chats) runs as a
batch of its own too; every decoding step then makes one forward pass per batch.

An error is confined to the requests it concerns: a failing prefill is retried one request at a
time, a failing logits processor fails its own request; only a failing decoding forward pass fails
the requests of that batch. The worker thread itself survives every error.

Prefix caching (:mod:`sra_rag.generation.prefix_cache`, batchable models only): before a prefill,
each request looks up the longest cached prefix it may take (never rows its SRA settings edit or its
readout reads); a request with a hit is prefilled alone, from a copy of the cached KV, and runs only
the rest of its prompt. After every generating prefill, the stock prefix of each row's KV is stored.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sra_rag.generation.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES, PrefixCache, stock_prefix
from sra_rag.generation.request import Request
from sra_rag.generation.runner import ModelRunner, PaddedCache, Prefill
from sra_rag.generation.sampling import LoopGuard, Sampler, check_scores
from sra_rag.generation.streaming import Channel, IncrementalText, TextStream, Update
from sra_rag.readout.recorder import ReadoutRecorder

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_PREFILL_TOKENS = 1024


@dataclass(eq=False)
class _Sequence:
    """A running request: its full ids so far (prompt and generated), how it chooses tokens, how
    its text is assembled, and what this step produced for its stream."""

    request: Request
    channel: Channel
    sampler: Sampler
    text: IncrementalText | None  # None when scoring forced tokens
    ids: torch.Tensor  # (1, prompt + max_new_tokens) buffer; the first `length` are filled
    length: int
    next_token: int = -1  # the last chosen token: the next decoding step's input
    loop_guard: LoopGuard | None = None
    update: Update = field(default_factory=Update)
    finished: bool = False

    @property
    def generated(self) -> int:
        return self.length - self.request.num_prompt_tokens


@dataclass
class SchedulerStats:
    """Counters since the scheduler started: forward passes and the rows they carried."""

    prefills: int = 0
    prefilled_rows: int = 0
    decode_steps: int = 0
    decoded_rows: int = 0
    peak_running: int = 0
    peak_batches: int = 0


@dataclass(eq=False)
class _Batch:
    """Running sequences that share one KV cache (row ``i`` of ``kv`` is ``rows[i]``)."""

    kv: PaddedCache
    rows: list[_Sequence]


class Scheduler:
    """Runs the requests of one model; ``submit`` returns a stream at once, generation happens on
    the worker thread (``sra-scheduler``, started on the first request).

    ``max_batch_size``: requests decoded together at most (the others wait);
    ``prefill_tokens``: padded prompt tokens prefilled together at most (a longer prompt is
    prefilled alone), between two decoding steps of the running batch; ``prefix_cache_bytes``: the
    budget of the prefix cache (0: off; models that cannot be batched have none).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: frozenset[int],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        for name, value in (("max_batch_size", max_batch_size), ("prefill_tokens", prefill_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(prefix_cache_bytes, int) or isinstance(prefix_cache_bytes, bool) or prefix_cache_bytes < 0:
            raise ValueError(f"prefix_cache_bytes must be a non-negative integer, got {prefix_cache_bytes!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_batch_size = max_batch_size
        self.prefill_tokens = prefill_tokens
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.runner = ModelRunner(model, int(pad) if pad is not None else 0)
        self.batchable = self.runner.batchable
        self.num_layers = int(model.config.get_text_config().num_hidden_layers)
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 and self.batchable else None
        self._waiting: deque[tuple[Request, Channel]] = deque()
        self._batches: list[_Batch] = []
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = SchedulerStats()
        _open_schedulers.add(self)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def submit(self, request: Request) -> TextStream:
        """Queue ``request``; its stream yields text as the worker generates it."""
        channel = Channel()
        stream = TextStream(request.num_prompt_tokens, channel)
        with self._wakeup:
            if self._closed:
                raise RuntimeError("This engine is closed; load a new one to generate.")
            self._waiting.append((request, channel))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sra-scheduler", daemon=True)
                self._thread.start()
            self._wakeup.notify()
        return stream

    @property
    def running(self) -> int:
        """Requests in the running batch(es) now."""
        return sum(len(batch.rows) for batch in self._batches)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker (idempotent): waiting and running requests end with an error, later
        requests are refused. Called for every scheduler when the interpreter exits, so that no
        forward pass is still running while the process tears down."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._waiting and not self._batches and not self._closed:
                    if not self._wakeup.wait(timeout=IDLE_SECONDS) and not self._waiting:
                        self._thread = None  # idle: end; the next submit starts a new worker
                        return
                if self._closed:
                    closed = RuntimeError("The engine was closed before this request finished.")
                    for _, channel in self._waiting:
                        channel.put(Update(error=closed))
                    for batch in self._batches:
                        for row in batch.rows:
                            row.channel.put(Update(error=closed))
                    self._waiting.clear()
                    self._batches.clear()
                    self._thread = None
                    return
            try:
                self._step()
            except Exception as error:  # a bug here must not strand the callers, nor stop the worker
                logger.exception("A scheduler step failed; failing the requests it was running")
                for batch in self._batches:
                    for row in batch.rows:
                        row.channel.put(Update(error=error))
                self._batches.clear()

    def _step(self) -> None:
        """Admit and prefill waiting requests, then one decoding step of every running batch."""
        self._drop_cancelled()
        group = self._admit()
        if group:
            self._prefill(group)
        for batch in list(self._batches):
            self._decode(batch)

    def _drop_cancelled(self) -> None:
        with self._wakeup:
            self._waiting = deque(item for item in self._waiting if not item[1].cancelled)
        for batch in list(self._batches):
            if any(row.channel.cancelled for row in batch.rows):
                self._keep(batch, [row for row in batch.rows if not row.channel.cancelled])

    def _admit(self) -> list[tuple[Request, Channel]]:
        """The waiting requests that join now: as many as the free slots and the prefill budget take."""
        free = self.max_batch_size - self.running
        group: list[tuple[Request, Channel]] = []
        with self._wakeup:
            longest = 0
            while self._waiting and len(group) < free:
                longest = max(longest, self._waiting[0][0].num_prompt_tokens)
                if group and (not self.batchable or longest * (len(group) + 1) > self.prefill_tokens):
                    break
                if group and self._waiting[0][0].read_only != group[0][0].read_only:
                    break  # a read-only prefill stops early, so it is never batched with generating rows
                group.append(self._waiting.popleft())
        return group

    # -- prefill ---------------------------------------------------------------------------------

    def _prefill(self, group: list[tuple[Request, Channel]]) -> None:
        """Prefill an admitted group: each request with a cached prefix alone, the others together."""
        if self.prefix_cache is not None:
            cold = []
            for item in group:
                prefix = self._cached_prefix(item[0])
                if prefix is None:
                    cold.append(item)
                else:
                    self._prefill_group([item], prefix)
            group = cold
        if group:
            self._prefill_group(group)

    def _cached_prefix(self, request: Request) -> torch.Tensor | None:
        """The cached KV ``(layers, 2, kv_heads, k, head_dim)`` of the longest prefix ``request`` may
        take: whole blocks before its first edited or read row, leaving at least one token to run."""
        assert self.prefix_cache is not None
        limit = min(stock_prefix(request, self.num_layers), request.num_prompt_tokens - 1)
        return self.prefix_cache.lookup(request.prompt_ids, limit)

    def _remember(self, requests: list[Request], kv: PaddedCache) -> None:
        """Store the stock prefix of each prefilled row's KV in the prefix cache."""
        if self.prefix_cache is None:
            return
        for row, request in enumerate(requests):
            limit = stock_prefix(request, self.num_layers)
            self.prefix_cache.insert(request.prompt_ids, limit, functools.partial(self.runner.row_kv, kv, row))

    def _prefill_group(self, group: list[tuple[Request, Channel]], prefix: torch.Tensor | None = None) -> None:
        try:
            if group[0][0].read_only:
                self._read(group, prefix)
                return
            batch, logits = self._prefill_batch(group, prefix)
        except Exception as error:
            if len(group) > 1:  # find the request that fails; the others go on
                for item in group:
                    self._prefill_group([item])
            else:
                group[0][1].put(Update(error=error))
            return
        try:
            self._choose(batch, logits)
            if batch.rows:
                self._join(batch)
        except Exception as error:  # e.g. out of memory while joining: these requests fail, the batch goes on
            logger.exception("Joining %d prefilled requests to the running batch failed", len(batch.rows))
            for row in batch.rows:
                row.channel.put(Update(error=error))

    def _prefill_batch(
        self, group: list[tuple[Request, Channel]], prefix: torch.Tensor | None = None
    ) -> tuple[_Batch, torch.Tensor]:
        """One forward pass over the group's prompts, left-padded, with each row's SRA settings and
        layout (or, with a cached ``prefix``, over the rest of one prompt). Returns the batch (its
        cache filled, its stock prefixes stored in the prefix cache) and the next-token logits
        ``(rows, vocab)``."""
        requests = [request for request, _ in group]
        recorders = [
            ReadoutRecorder(request.layout, profile=request.readout)
            if request.readout is not None and request.layout is not None
            else None
            for request in requests
        ]
        prefill = self._run_prefill(requests, recorders, prefix)
        assert prefill.outputs is not None  # only a read-only pass stops early
        logits = prefill.outputs.logits[:, -1, :].float()
        self._remember(requests, prefill.kv)
        rows = [self._start(request, channel) for request, channel in group]
        for sequence, recorder in zip(rows, recorders, strict=True):
            sequence.update.prefill_seconds = prefill.seconds
            readout = None if recorder is None else recorder.readout()
            if readout is not None and sequence.request.readout is not None:
                sequence.update.document_attention = sequence.request.readout.score(readout)
        return _Batch(prefill.kv, rows), logits

    def _read(self, group: list[tuple[Request, Channel]], prefix: torch.Tensor | None = None) -> None:
        """A group of read-only requests: the prompts run as far as their readout needs (the
        profile's layer band), then each stream ends with its document attention and no text."""
        requests = [request for request, _ in group]
        recorders: list[ReadoutRecorder | None] = []
        for request in requests:
            assert request.readout is not None and request.layout is not None  # checked by Request
            recorders.append(ReadoutRecorder(request.layout, profile=request.readout, until=request.readout.layers[1]))
        seconds = self._run_prefill(requests, recorders, prefix).seconds
        for (request, channel), recorder in zip(group, recorders, strict=True):
            assert request.readout is not None and recorder is not None
            readout = recorder.readout()
            if readout is None:
                raise RuntimeError("the read-only prefill recorded no readout")
            attention = request.readout.score(readout)
            channel.put(Update(prefill_seconds=seconds, document_attention=attention, finish_reason="stop"))

    def _run_prefill(
        self, requests: list[Request], recorders: list[ReadoutRecorder | None], prefix: torch.Tensor | None = None
    ) -> Prefill:
        if prefix is not None:
            (request,), (recorder,) = requests, recorders
            prefill = self.runner.prefill_cached(request, recorder, prefix)
        else:
            prefill = self.runner.prefill(requests, recorders)
        self.stats.prefills += 1
        self.stats.prefilled_rows += len(requests)
        return prefill

    def _join(self, joining: _Batch) -> None:
        """Add a prefilled batch to a running one it can share decoding steps with, else run it
        beside the others. Joining pads every row to the longest, so a batch is only joined when
        that padding stays small (at most its real tokens, or ``MAX_PADDING_TOKENS``): sixteen short
        chats are not padded to the length of one long document."""
        if self.batchable:
            for batch in self._batches:
                length = max(batch.kv.length, joining.kv.length)
                rows = len(batch.rows) + len(joining.rows)
                real = batch.kv.real_tokens + joining.kv.real_tokens
                if rows * length - real <= max(real, MAX_PADDING_TOKENS):
                    self.runner.merge(batch.kv, joining.kv)
                    batch.rows += joining.rows
                    return
        self._batches.append(joining)

    def _start(self, request: Request, channel: Channel) -> _Sequence:
        total = request.num_prompt_tokens + request.sampling.max_new_tokens
        ids = torch.empty((1, total), dtype=torch.long, device=self.device)
        ids[0, : request.num_prompt_tokens] = torch.tensor(request.prompt_ids, device=self.device)
        sampler = Sampler(request.sampling, request.logits_processors, self.device, request.num_prompt_tokens)
        text = None if request.forced_tokens else IncrementalText(self.tokenizer, request.sampling.stop)
        span = request.sampling.loop_guard
        guard = LoopGuard(span) if span and not request.forced_tokens else None
        return _Sequence(request, channel, sampler, text, ids, request.num_prompt_tokens, loop_guard=guard)

    # -- decoding ----------------------------------------------------------------------------------

    def _decode(self, batch: _Batch) -> None:
        """One token for every row of ``batch``: each row feeds its last token at its own position."""
        try:
            logits = self.runner.decode(batch.kv, [row.next_token for row in batch.rows])
        except Exception as error:  # not attributable to one row: the batch's requests fail, others go on
            logger.exception("A decoding step failed; failing the %d requests of its batch", len(batch.rows))
            for row in batch.rows:
                row.channel.put(Update(error=error))
            self._batches.remove(batch)
            return
        self.stats.decode_steps += 1
        self.stats.decoded_rows += len(batch.rows)
        self.stats.peak_running = max(self.stats.peak_running, self.running)
        self.stats.peak_batches = max(self.stats.peak_batches, len(self._batches))
        self._choose(batch, logits)

    def _choose(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Pick every row's next token from ``logits (rows, vocab)``, hand each stream its update,
        and let finished rows leave the batch."""
        argmax: list[int] | None = None
        usable: list[bool] = []
        for index, row in enumerate(batch.rows):
            try:
                if row.request.forced_tokens:
                    token = row.request.forced_tokens[row.generated]
                elif row.sampler.needs_ids:
                    token = row.sampler.choose(row.ids[:, : row.length], logits[index : index + 1])
                else:
                    if argmax is None:
                        argmax = logits.argmax(-1).tolist()
                        usable = (torch.isfinite(logits).all(-1)).tolist()
                    if not usable[index]:
                        check_scores(logits[index : index + 1])
                    token = argmax[index]
                self._record(row, token, logits[index])
            except Exception as error:  # this request's processors or detokenisation: it alone fails
                row.update = Update(error=error)
                row.finished = True
            update, row.update = row.update, Update()
            if update.tokens or update.piece or update.last or update.prefill_seconds is not None:
                row.channel.put(update)
        if any(row.finished for row in batch.rows):
            self._keep(batch, [row for row in batch.rows if not row.finished])

    def _record(self, row: _Sequence, token: int, logits: torch.Tensor) -> None:
        """Add the chosen ``token`` to ``row`` (logits ``(vocab,)``: its scores) and end the row on
        an end-of-sequence token, a stop string or its token budget."""
        request, update = row.request, row.update
        if row.text is not None and token in self.eos_token_ids:
            update.piece += row.text.finish()
            update.finish_reason = "stop"
            row.finished = True
            return
        row.ids[0, row.length] = token
        row.length += 1
        row.next_token = token
        update.tokens.append(token)
        if request.logprobs:
            update.logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
        if row.text is not None:
            update.piece += row.text.push(token)
            if row.text.stopped:
                update.finish_reason = "stop"
                row.finished = True
                return
        looping = row.loop_guard is not None and row.loop_guard.push(token)
        if looping or row.generated >= request.sampling.max_new_tokens:
            if row.text is not None:
                update.piece += row.text.finish()
            update.finish_reason = "stop" if looping else "length"
            row.finished = True

    def _keep(self, batch: _Batch, rows: list[_Sequence]) -> None:
        """Shrink ``batch`` to ``rows`` (and drop the padding no remaining row needs)."""
        if not rows:
            batch.rows = []
            if batch in self._batches:
                self._batches.remove(batch)
            return
        self.runner.select(batch.kv, [batch.rows.index(row) for row in rows])
        batch.rows = rows


MAX_PADDING_TOKENS = 8192
"""Padding positions a join may add beyond its real tokens (see ``Scheduler._join``)."""

IDLE_SECONDS = 0.0
"""A worker with nothing to do for this long ends (the next request starts a new one). At once: a
live worker keeps its OpenMP threads, and while one engine's idle worker keeps them, every other
thread's CPU kernels run a third slower (:mod:`sra_rag.generation.compute`); a new worker costs
well under a millisecond."""

_open_schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A daemon thread still inside a forward pass while the interpreter finalises can abort the
    # process ("terminate called without an active exception"); stop the workers first.
    for scheduler in list(_open_schedulers):
        scheduler.close(timeout=5.0)
