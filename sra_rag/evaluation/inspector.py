"""The inspector: for one question over some documents, what the model read, layer by layer.

:func:`inspect_prompt` builds the reader's prompt (the documents numbered, the question last), runs
one prefill with stock attention (and one more with the given SRA settings when they are on), and
returns an :class:`Inspection`: per layer, the question's attention mass on each document (raw, and
calibrated by the engine's readout profile) and the paper's token classes as shares of the question
rows' attention mass. :func:`write_report` draws them (PNG, matplotlib) and writes one
self-contained HTML page (images embedded) to look at. ``sra-rag inspect`` runs both.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sra_rag.config import SRAConfig
from sra_rag.rag.stuffing import Chunk, stuff_prompt
from sra_rag.readout.recorder import CLASS_NAMES, DocumentAttention, ReadoutRecorder

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine


@dataclass(frozen=True)
class Pass:
    """One prefill's readout: ``attention`` (scores, raw mass ``(layers, documents)``) and
    ``classes`` ``(layers, 3)``: shares of the question rows' mass in each class of :data:`CLASS_NAMES`."""

    setting: str
    attention: DocumentAttention
    classes: np.ndarray


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_prompt` measured. ``labels``: the documents' names in prompt order;
    ``passes``: stock attention first, then the SRA setting when one is on."""

    question: str
    labels: list[str]
    passes: list[Pass]
    calibrated_scores: np.ndarray  # (layers, documents): raw_scores minus the position bias
    raw_scores: np.ndarray  # (layers, documents): log mass, length-normalised as the profile says


def _prefill(engine: SRAEngine, messages: list[dict[str, str]], layout, sra: SRAConfig) -> ReadoutRecorder:
    prepared = engine.prepare(messages, layout=layout)
    recorder = ReadoutRecorder(prepared.layout, token_classes=True, profile=engine.readout_profile)
    with torch.inference_mode():
        engine.model(
            input_ids=prepared.input_ids,
            sra_config=sra,
            sra_layout=prepared.layout,
            sra_readout=recorder,
            logits_to_keep=1,
        )
    return recorder


def inspect_prompt(
    engine: SRAEngine, question: str, documents: Sequence[str], labels: Sequence[str] | None = None,
    sra: SRAConfig | None = None,
) -> Inspection:  # fmt: skip
    """Inspect ``question`` over ``documents`` (texts, in prompt order; ``labels``: their names,
    default ``document 1..n``) as the reader would prompt the model; ``sra``: an SRA setting to
    compare with stock attention (None or disabled: stock only)."""
    if not documents:
        raise ValueError("Pass at least one document to inspect.")
    names = list(labels) if labels is not None else [f"document {i + 1}" for i in range(len(documents))]
    if len(names) != len(documents) or len(set(names)) != len(names):
        raise ValueError("labels must name each document once (one distinct label per document)")
    chunks = [Chunk(text, name, 0) for text, name in zip(documents, names, strict=True)]
    stuffed = stuff_prompt(engine, question, chunks, max_new_tokens=1)
    settings = [("stock attention", SRAConfig.preset("off"))]
    if sra is not None and sra.enabled:
        settings.append(("SRA", sra))
    passes = []
    for name, config in settings:
        recorder = _prefill(engine, stuffed.messages, stuffed.layout, config)
        readout = recorder.readout()
        if readout is None:
            raise RuntimeError("the prefill recorded no readout")
        classes = np.array([recorder.classes[layer] for layer in range(readout.num_layers)])
        passes.append(Pass(name, engine.readout_profile.score(readout), classes))
    stock = passes[0].attention.readout
    raw = engine.readout_profile.model_copy(update={"calibrated": False}).layer_scores(stock)
    return Inspection(question, stuffed.sources, passes, engine.readout_profile.layer_scores(stock), raw)


def _png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot(inspection: Inspection) -> dict[str, bytes]:
    """PNG images by file name: ``documents.png`` (per layer and document: raw and calibrated
    scores, and the raw mass of each pass) and ``token_classes.png`` (class shares per layer)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - matplotlib is a dependency of the eval extra
        raise ImportError("The inspector draws with matplotlib: pip install matplotlib") from error

    images = {}
    panels = [("raw: log mass (no position bias)", inspection.raw_scores)]
    calibrated = inspection.passes[0].attention.calibrated
    panels.append(
        (
            "calibrated: minus the position bias" if calibrated else "calibrated: no profile (raw)",
            inspection.calibrated_scores,
        )
    )
    panels += [(f"mass from the question, {p.setting}", np.array(p.attention.readout.mass)) for p in inspection.passes]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.35 * len(inspection.labels) + 3))
    for axis, (title, values) in zip(np.atleast_1d(axes), panels, strict=True):
        image = axis.imshow(values.T, aspect="auto", cmap="viridis", interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("layer")
        axis.set_yticks(
            range(len(inspection.labels)),
            [f"[{i + 1}] {name}"[:28] for i, name in enumerate(inspection.labels)],
            fontsize=7,
        )
        figure.colorbar(image, ax=axis, fraction=0.04)
    low, high = inspection.passes[0].attention.layers
    for axis in np.atleast_1d(axes)[:2]:
        axis.axvspan(low - 0.5, high - 0.5, fill=False, edgecolor="white", linestyle="--")
    images["documents.png"] = _png(figure)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(inspection.passes), figsize=(5 * len(inspection.passes), 3.4), squeeze=False)
    for axis, item in zip(axes[0], inspection.passes, strict=True):
        layers = np.arange(item.classes.shape[0])
        axis.stackplot(layers, item.classes.T, labels=CLASS_NAMES)
        axis.set_title(f"token classes of the question's attention, {item.setting}", fontsize=9)
        axis.set_xlabel("layer")
        axis.set_ylabel("share of attention mass")
        axis.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, loc="lower left")
    images["token_classes.png"] = _png(figure)
    plt.close(figure)
    return images


def write_report(inspection: Inspection, out: str | Path) -> Path:
    """Write the PNG plots and ``index.html`` (self-contained: the images are embedded) into the
    folder ``out``; returns the page's path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    images = plot(inspection)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    stock = inspection.passes[0].attention
    kind = "calibrated" if stock.calibrated else "raw (no readout profile for this model: uncalibrated)"
    rows = "".join(
        f"<tr><td>{rank + 1}</td><td>[{index + 1}] {html.escape(inspection.labels[index])}</td>"
        + "".join(f"<td>{item.attention.scores[index]:+.2f}</td>" for item in inspection.passes)
        + "</tr>"
        for rank, index in enumerate(stock.ranking)
    )
    headers = "".join(f"<th>score, {html.escape(item.setting)}</th>" for item in inspection.passes)
    pictures = "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}"><br>'
        for name, data in images.items()
    )
    low, high = stock.layers
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sra-rag inspect</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:left}}img{{max-width:100%}}</style>
</head><body><h1>What the model read</h1><p><b>Question:</b> {html.escape(inspection.question)}</p>
<p>Documents ranked by how much the question attends to them ({kind}; layers {low}-{high - 1}, higher = read
more).</p><table><tr><th>rank</th><th>source</th>{headers}</tr>{rows}</table>{pictures}
<p>Token classes (the paper's): the share of the question rows' attention mass carried by weights above 0.05
(Linchpins), from 0.01 to 0.05 (Hidden Gems / Context Fillers) and below 0.01 (Small Potatoes).</p>
</body></html>
"""
    path = folder / "index.html"
    path.write_text(page)
    return path
