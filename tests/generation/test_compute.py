"""The threads CPU work runs on (sra_rag/generation/compute.py): work in a passing thread returns and
raises as a plain call would, and the engine loads its model off the caller's thread."""

import contextvars
import threading

import pytest

from sra_rag import SRAEngine
from sra_rag.generation.compute import in_passing_thread

_label: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="unset")


def test_work_runs_in_a_thread_of_its_own_and_returns_its_result():
    caller = threading.get_ident()
    _label.set("request-7")

    def work(a, *, b):
        return a + b, threading.get_ident(), _label.get()

    total, ident, label = in_passing_thread(work, 2, b=3)
    assert total == 5 and ident != caller
    assert label == "request-7"  # the caller's context variables travel with the work


def test_an_error_reaches_the_caller():
    def fail():
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        in_passing_thread(fail)


class _Stop(Exception):
    pass


def test_the_engine_loads_its_model_off_the_caller_s_thread(monkeypatch):
    seen = []

    def load(*args, **kwargs):
        seen.append(threading.get_ident())
        raise _Stop

    monkeypatch.setattr("sra_rag.engine.load", load)
    with pytest.raises(_Stop):
        SRAEngine.from_pretrained("smollm2-135m")
    assert seen and seen[0] != threading.get_ident()


def test_embedding_runs_off_the_caller_s_thread(monkeypatch):
    import numpy as np

    from sra_rag.rag import embeddings

    seen = []

    class Model:
        def encode(self, texts, **kwargs):
            seen.append(threading.get_ident())
            return np.zeros((len(texts), embeddings.EMBEDDING_DIMENSION), dtype=np.float32)

    monkeypatch.setattr(embeddings, "sentence_transformer", lambda model_path=None: Model())
    assert embeddings.embed(["a", "b"]).shape == (2, embeddings.EMBEDDING_DIMENSION)
    assert seen and seen[0] != threading.get_ident()
