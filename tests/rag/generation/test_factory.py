"""One way to name a model: every command's spec goes through rag.generation.factory, and they all agree.

Real parts: the bundled GGUF and its converted folder in the default model cache (converted once, reused),
a `raft train`-shaped output folder whose merged/ links to that folder, and an OpenAI-compatible URL that
is never contacted (building the HTTP backend sends nothing). The teacher's part packages are pointed at
an absent package, so every command must stop at the same install message (the real teacher is tested
in test_teacher.py when installed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rag.api
from raft.evaluate import model_fingerprint, parse_list
from raft.train.model import load_base, resolve_base
from rag.config import load_settings
from rag.errors import GeneratorError, RagError
from rag.generation import teacher
from rag.generation.base import Generator
from rag.generation.factory import ACCEPTED, ModelSpec, get_generator, resolve_model
from rag.generation.http import OpenAIGenerator
from rag.generation.local import LocalGenerator
from rag.generation.models import BUNDLED_MODEL_ID, bundled_gguf_path, convert_gguf
from rag.generation.teacher import TEACHER_MODEL_ID, Part, locate_part

URL = "http://127.0.0.1:9/v1"  # port 9 (discard): never contacted here


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def bundled_folder() -> Path:
    """The bundled model converted into the default cache (what `--model bundled` loads; ~20 s the first time)."""
    return convert_gguf(bundled_gguf_path())


@pytest.fixture(scope="module")
def raft_output(bundled_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `raft train` OUT folder: its merged/ model (a link to the converted bundled model) and a report."""
    out = tmp_path_factory.mktemp("raft-out")
    (out / "merged").symlink_to(bundled_folder, target_is_directory=True)
    (out / "train_report.json").write_text("{}", encoding="utf-8")
    return out


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """load_settings() sees the flags only (no rag.toml, no RAG_MODEL from the environment)."""
    empty = tmp_path / "empty-rag.toml"
    empty.write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(empty))
    for var in ("RAG_MODEL", "RAG_MODEL_NAME", "RAG_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- every command, one factory


def _backend(generator: Generator) -> tuple[str, str, str]:
    """What a built backend serves: ("http", URL, id) or ("local", resolved model folder, id)."""
    if isinstance(generator, OpenAIGenerator):
        return ("http", generator.url, generator.model_id)
    assert isinstance(generator, LocalGenerator)
    return ("local", str(generator.model_dir.resolve()), generator.model_id)


def _outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or ("error", the one-line message): how a command ends up resolving a spec."""
    try:
        return ("ok", run())
    except RagError as e:
        assert "\n" not in str(e)
        return ("error", str(e))


def _commands(spec: str, name: str | None) -> dict[str, Callable[[], Any]]:
    """Each command's own path from the spec it was given to the model it will use.

    rag ask/eval/serve and raft generate put `--model`/`--model-name` into load_settings() and call
    rag.api.get_generator (`make_pipeline` for ask/serve, `run` for raft generate); the chat app's
    load_generator() calls the same with the sidebar's choice (whose server-or-local switch is
    resolve_model(...).kind). raft eval splits `--models` with parse_list, fingerprints each model and
    builds it with factory.get_generator; raft train resolves `--base` with resolve_base. (`rag search`
    takes no model.)
    """

    def settings_path() -> tuple[str, str, str]:
        return _backend(rag.api.get_generator(load_settings(model=spec, model_name=name)))

    def raft_eval() -> tuple[str, str, str]:
        (m,) = parse_list(spec, "--models")
        assert model_fingerprint(m, name) == resolve_model(m, model_name=name).fingerprint()
        return _backend(get_generator(m, model_name=name))

    def raft_train() -> tuple[str, str, str]:
        folder, base_id = resolve_base(spec)
        return ("local", str(folder.resolve()), base_id)

    return {
        "rag ask --model": settings_path,
        "rag eval --model": settings_path,
        "rag serve --model": settings_path,
        "raft generate --model": settings_path,
        "chat app sidebar": settings_path,
        "raft eval --models": raft_eval,
        "raft train --base": raft_train,
    }


LOADING = ["bundled", " Bundled ", "gguf", "folder", "folder/", "raft-output"]  # these build a LocalGenerator
CASES = [*(pytest.param(c, marks=pytest.mark.llm) for c in LOADING), "http", "teacher", "Qwen2.5-Coder-0.5B",
         "missing", "typo", "not-a-model"]


@pytest.mark.parametrize("case", CASES)
def test_every_command_resolves_a_spec_like_the_factory(
    case: str, bundled_folder: Path, raft_output: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = None
    if case == "gguf":
        spec = str(bundled_gguf_path())
    elif case in ("folder", "folder/"):
        spec = str(bundled_folder) + ("/" if case == "folder/" else "")
    elif case == "raft-output":
        spec = str(raft_output)
    elif case == "http":
        spec, name = URL, "tiny"
    elif case == "missing":
        spec = str(tmp_path / "no-such-model")
    elif case == "typo":
        spec = "bundle"
    elif case == "not-a-model":
        (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
        spec = str(tmp_path)
    else:
        spec = case
    if case in ("teacher", "Qwen2.5-Coder-0.5B"):  # an empty cache and an absent part package: the install message
        # the setting cache_dir for the commands that read settings; the default for the bare factory calls
        monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(teacher, "default_cache_dir", lambda: tmp_path / "cache")
        monkeypatch.setattr(teacher, "TEACHER_PARTS", (Part("absent-teacher-part", "absent_teacher_part", "d", 1, "0"),))

    # What the factory says the spec names, and what a generator / a training run gets from it.
    def expected_generator() -> tuple[str, str, str]:
        resolved = resolve_model(spec, model_name=name)
        if resolved.kind == "http":
            return ("http", f"{resolved.url}/chat/completions", resolved.model_id)
        return ("local", str(resolved.local_dir().resolve()), resolved.model_id)

    def expected_weights() -> tuple[str, str, str]:
        resolved = resolve_model(spec)
        return ("local", str(resolved.local_dir().resolve()), resolved.model_id)

    want_generator, want_weights = _outcome(expected_generator), _outcome(expected_weights)
    got = {command: _outcome(run) for command, run in _commands(spec, name).items()}
    for command, outcome in got.items():
        assert outcome == (want_weights if command == "raft train --base" else want_generator), command

    # ... and what that is, per case.
    kind, value = want_generator
    if case in ("bundled", " Bundled ", "gguf", "folder", "folder/", "raft-output"):
        model_id = {"bundled": BUNDLED_MODEL_ID, " Bundled ": BUNDLED_MODEL_ID, "raft-output": str(raft_output / "merged")}
        assert want_generator == want_weights == (
            "ok", ("local", str(bundled_folder.resolve()), model_id.get(case, spec.rstrip("/"))))
    elif case == "http":
        assert want_generator == ("ok", ("http", f"{URL}/chat/completions", "tiny"))
        assert want_weights[0] == "error" and "is an OpenAI-compatible server, not a local model" in want_weights[1]
    elif case in ("teacher", "Qwen2.5-Coder-0.5B"):
        assert resolve_model(spec).model_id == TEACHER_MODEL_ID
        assert kind == "error" and "the teacher model needs the package absent-teacher-part" in value
    else:
        assert kind == "error" and ACCEPTED in value and spec.strip() in value


def _teacher_installed() -> bool:
    return all((path := locate_part(p)) is not None and path.is_file() for p in teacher.TEACHER_PARTS)


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.skipif(not _teacher_installed(), reason="teacher not installed: pip install -e .[teacher]")
def test_raft_train_takes_the_real_teacher_like_rag_ask() -> None:
    """`raft train --base teacher` was refused while `rag ask --model teacher` worked (issue 10)."""
    folder, base_id = resolve_base("teacher")  # assembles and converts once (~1 min, ~2.4 GB), then a stat
    generator = rag.api.get_generator(load_settings(model="teacher"))
    assert (folder.resolve(), base_id) == (generator.model_dir.resolve(), generator.model_id) == (
        folder.resolve(), TEACHER_MODEL_ID)
    model, tokenizer = load_base(folder)  # the fresh float32 copy raft train fine-tunes: it has a chat template
    assert tokenizer.chat_template and model.config.model_type == "qwen2"


# --------------------------------------------------------------------------- the parser


def test_the_parser_names_each_kind(bundled_folder: Path, raft_output: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = bundled_gguf_path()
    table = {
        None: ("bundled", None), "": ("bundled", None), "BUNDLED": ("bundled", None), "teacher": ("teacher", None),
        " qwen2.5-coder-0.5b": ("teacher", None), "HTTPS://example.invalid/v1": ("http", None),
        str(gguf): ("gguf", gguf), str(bundled_folder): ("folder", bundled_folder),
        str(raft_output): ("raft-output", raft_output),
    }
    for text, (kind, path) in table.items():
        spec = resolve_model(text)
        assert (spec.kind, spec.path) == (kind, path), text
        assert spec.local == (kind != "http")
        assert resolve_model(spec) is spec  # an already resolved spec passes through
    assert hash(resolve_model("bundled")) == hash(resolve_model(" bundled "))  # usable as a cache key
    # a keyword wins over a folder of that name in the working directory
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("teacher").kind == "teacher"
    assert resolve_model("./teacher").kind == "folder"


def test_an_unknown_spec_lists_every_accepted_form(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError) as info:
        resolve_model("gpt-4o")
    message = str(info.value)
    assert message.startswith("unknown model 'gpt-4o': no such file or folder; use ")
    for form in ('"bundled"', '"teacher"', "http(s)://", "config.json", ".gguf", "`raft train` output"):
        assert form in message
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(GeneratorError, match=r"no model in .*weights.safetensors.*not a \.gguf file"):
        resolve_model(str(tmp_path / "weights.safetensors"))


def test_fingerprints_follow_the_model_files(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    before = resolve_model(str(folder)).fingerprint()
    assert len(before) == 16 and before == model_fingerprint(str(folder))
    (folder / "model.safetensors").write_bytes(b"weights")
    assert resolve_model(str(folder)).fingerprint() != before  # a retrained model gets new answers
    assert resolve_model(URL, model_name="tiny").fingerprint() == f"{URL} tiny"
    assert resolve_model("teacher").fingerprint() == teacher.TEACHER_SHA256[:16]  # pinned content
    with pytest.raises(GeneratorError, match="unknown model"):  # refused before any answer is made
        model_fingerprint(str(tmp_path / "gone"))


# --------------------------------------------------------------------------- declared capabilities


@pytest.mark.llm
def test_backends_declare_what_they_can_do(bundled_folder: Path) -> None:
    local = get_generator(str(bundled_folder))
    remote = get_generator(URL)
    # parallel: the default ONNX decoder writes concurrent answers in shared passes (rag/generation/decoder/engine.py)
    assert (local.local, local.supports_logprobs, local.parallel_requests, local.small_model) == (True, True, True, True)
    assert (remote.local, remote.supports_logprobs, remote.parallel_requests, remote.small_model) == (
        False, False, True, False)
    # The declared capability is the real one: the local model scores continuations, the server refuses.
    messages = [{"role": "user", "content": "The capital of France is Paris. What is the capital of France?"}]
    good, bad = local.score_continuations(messages, "The capital of France is", [" Paris.", " a soup of stones."])
    assert good > bad
    with pytest.raises(GeneratorError, match="gives no token log-probabilities"):
        remote.continuation_logprobs(messages, "", ["x"])


@pytest.mark.llm  # LocalGenerator loads the model it is given
def test_the_local_backend_takes_a_resolved_spec_but_not_a_server(bundled_folder: Path) -> None:
    spec = resolve_model(str(bundled_folder))
    assert isinstance(spec, ModelSpec)
    gen = LocalGenerator(spec)
    assert gen.spec is spec and gen.model_dir == bundled_folder and gen.model_id == str(bundled_folder)
    with pytest.raises(GeneratorError, match="is an OpenAI-compatible server, not a local model"):
        LocalGenerator(URL)
