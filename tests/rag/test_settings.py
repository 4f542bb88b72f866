"""One place for settings: what the product reads from the environment is a Settings field (RAG_<FIELD>),
and the few variables read elsewhere are the process-level knobs listed in rag.config.PROCESS_KNOBS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag.config import PROCESS_KNOBS, Settings, environment_api_key, load_settings
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    for name in ("RAG_API_KEY", "OPENAI_API_KEY", "RAG_CACHE_DIR", "RAG_DECODER", "RAG_DRAFT"):
        monkeypatch.delenv(name, raising=False)


def test_the_api_key_comes_from_rag_api_key_then_openai_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().api_key is None and load_settings().api_key_value() == ""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert load_settings().api_key_value() == "sk-openai"
    monkeypatch.setenv("RAG_API_KEY", "sk-rag")
    assert load_settings().api_key_value() == "sk-rag"
    assert load_settings(api_key="sk-flag").api_key_value() == "sk-flag"
    monkeypatch.setenv("RAG_API_KEY", "")  # set but empty: as unset
    assert load_settings().api_key_value() == "sk-openai" and environment_api_key().get_secret_value() == "sk-openai"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert load_settings().api_key is None and environment_api_key() is None


def test_the_api_key_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_API_KEY", "sk-do-not-print")
    settings = load_settings()
    assert "sk-do-not-print" not in repr(settings) and "sk-do-not-print" not in str(settings.model_dump())


def test_the_config_file_holds_the_new_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "rag.toml"
    config.write_text(f'decoder = "int8"\ndraft = "off"\ncache_dir = "{tmp_path / "models"}"\n', encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(config))
    settings = load_settings()
    assert (settings.decoder, settings.draft, settings.cache_dir) == ("int8", "off", tmp_path / "models")
    monkeypatch.setenv("RAG_DECODER", "transformers")  # the environment beats the file
    assert load_settings().decoder == "transformers"


def test_every_new_setting_has_a_description() -> None:
    for name in ("decoder", "draft", "cache_dir", "api_key"):
        assert Settings.model_fields[name].description, name


_READ = re.compile(r"os\.environ|os\.getenv")
# the variable a read or write names (os.environ.get("X"), os.environ["X"], getenv("X")), or a key of an
# environment given to a subprocess ({**os.environ, "X": ...})
_NAME = re.compile(r"""(?:environ(?:\.\w+)?\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']|["']([A-Z][A-Z0-9_]+)["']\s*:""")


def test_the_environment_is_read_only_in_config_or_for_a_listed_process_knob() -> None:
    """Outside rag/config.py, a line that touches os.environ either copies it whole for a subprocess or names
    a variable listed in PROCESS_KNOBS; no RAG_* variable is read anywhere but rag/config.py."""
    bad = []
    for package in ("rag", "raft", "ui"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "rag" / "config.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not _READ.search(line):
                    continue
                names = [n for pair in _NAME.findall(line) for n in pair if n]
                if not names and "{**os.environ" not in line:
                    bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
                bad += [f"{path.relative_to(ROOT)}:{number}: {n} is not in PROCESS_KNOBS" for n in names
                        if n not in PROCESS_KNOBS or n.startswith("RAG_")]
    assert not bad, "\n".join(bad)
    assert all(reason.strip() for reason in PROCESS_KNOBS.values())


def test_the_key_never_travels_to_a_ray_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`raft generate --engine ray` gives its workers the driver's settings as JSON, but not the key: a worker
    takes its own from its environment (rag.config.environment_api_key)."""
    import json

    from raft.synth.ray_engine import worker_settings

    monkeypatch.setenv("RAG_API_KEY", "sk-driver")
    sent = worker_settings(load_settings(index_dir=tmp_path / "index", cache_dir=tmp_path / "models",
                                         decoder="int8", prefill_dtype="float32"))
    assert "api_key" not in sent and "sk-driver" not in json.dumps(sent)
    assert (sent["cache_dir"], sent["decoder"], sent["draft"], sent["prefill_dtype"]) == (
        str(tmp_path / "models"), "int8", "auto", "float32")
