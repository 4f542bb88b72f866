"""The Streamlit chat (ui/app.py) driven by streamlit.testing.v1.AppTest: real embedder, real index, real
bundled generator with a few tokens, real files in temp folders. The key tests point the app at the suite's
fake OpenAI-compatible server on 127.0.0.1 (tests/fake_openai.py), which records what it receives (a
stand-in for a model server, which cannot run here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from rag.api import index_corpus, search
from rag.config import Settings
from rag.errors import RagError
from rag.index.build import build_lock
from tests.conftest import ROOT
from tests.fake_openai import FakeServer, free_port, sse
from tests.pdfgen import make_flate_bomb_pdf, make_pdf
from ui.access import allowed_servers, require_admin, server_key
from ui.files import MAX_UPLOAD_BYTES, remove_document, safe_filename, save_upload
from ui.render import passage_html

APP = str(ROOT / "ui" / "app.py")
TIMEOUT = 180  # the first run loads the models
ON_TOPIC = "What does LoRA freeze during fine-tuning?"
OFF_TOPIC = "How do I bake sourdough bread at home?"
SOURDOUGH_MD = """# Baking at home

## Sourdough bread

To bake sourdough bread at home, feed the starter the evening before, mix flour, water, salt and
starter, let the dough rise overnight, shape it and bake it in a hot covered pot for 45 minutes.
"""


ADMIN = "admin-secret-7c2e"


def point_app_at(monkeypatch: pytest.MonkeyPatch, settings: Settings, max_new_tokens: int = 8, **env: str) -> None:
    """Make load_settings() inside the app see this index and corpus (and nothing from a rag.toml or the
    caller's environment); `env` sets more RAG_* variables, e.g. RAG_ADMIN_SECRET."""
    monkeypatch.setenv("RAG_INDEX_DIR", str(settings.index_dir))
    monkeypatch.setenv("RAG_CORPUS_DIR", str(settings.corpus_dir))
    monkeypatch.setenv("RAG_MAX_NEW_TOKENS", str(max_new_tokens))
    empty = settings.index_dir.parent / "empty-rag.toml"  # no settings from a rag.toml in the checkout
    empty.write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(empty))
    monkeypatch.setenv("RAG_HISTORY_PATH", str(settings.index_dir.parent / "test-chats.sqlite3"))
    for var in ("RAG_MODE", "RAG_TOP_K", "RAG_MODEL", "RAG_MODEL_NAME", "RAG_TEMPERATURE", "RAG_TOP_P",
                "RAG_ADMIN_SECRET", "RAG_UI_BACKEND_URLS", "RAG_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def start(monkeypatch: pytest.MonkeyPatch, settings: Settings, *, admin: bool = False, **kw: Any) -> AppTest:
    """Run the app; `admin` configures the admin secret and types it into the sidebar."""
    if admin:
        kw["RAG_ADMIN_SECRET"] = ADMIN
    point_app_at(monkeypatch, settings, **kw)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    if admin:
        at.text_input(key="admin_secret").set_value(ADMIN).run()
        assert not at.exception, at.exception
    return at


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input(key="question").set_value(question).run()
    assert not at.exception, at.exception
    return at


def facts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.sidebar.markdown)


def label(expander) -> str:
    """An expander's title without markdown escapes."""
    return expander.label.replace("\\", "")


def flashes(at: AppTest) -> str:
    return "\n".join(e.value for kind in (at.sidebar.success, at.sidebar.error, at.sidebar.info,
                                         at.sidebar.warning) for e in kind)


@pytest.fixture
def small_index(small_corpus: Path, tmp_path: Path) -> Settings:
    """The three-file corpus indexed into its own folder (tests that add or remove files write here)."""
    settings = Settings(index_dir=tmp_path / "index", corpus_dir=small_corpus)
    index_corpus(small_corpus, settings)
    return settings


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_question_gets_a_streamed_answer_with_sources(monkeypatch, course_index):
    at = start(monkeypatch, course_index)
    assert any("RAFT-tuned on this course" in c.value for c in at.sidebar.caption)  # the shipped course's adapter
    assert "**Documents:** 5" in facts(at)
    assert "all\\-MiniLM\\-L6\\-v2" in facts(at)
    at.number_input(key="max_new_tokens").set_value(3)
    ask(at, ON_TOPIC)
    user, bot = at.chat_message
    assert user.name == "user" and user.markdown[0].value == ON_TOPIC
    assert bot.name == "assistant" and not bot.error and not bot.warning
    answer = bot.markdown[0].value
    generated = answer.split("\n\n")[-1]  # a grounded answer starts with its quote, which is not generated
    assert generated.strip() and len(generated.split()) <= 3  # the sidebar's max tokens reached the generator
    assert 1 <= len(bot.expander) <= 5
    assert any("fine" in label(e).lower() or "lora" in "".join(m.value for m in e.markdown).lower()
               for e in bot.expander)
    passages = [m.value for e in bot.expander for m in e.markdown]
    assert passages and any(":color[" in p for p in passages)  # the quote, highlighted in its rendered passage
    tokens = [t for p in passages for block in MarkdownIt("commonmark").parse(p) for t in [block, *(block.children or [])]]
    assert not [t for t in tokens if t.type in ("html_block", "html_inline", "image")]  # no raw HTML, no image
    answer_id = at.session_state.messages[1]["id"]  # each source opens in its document
    assert {b.key for e in bot.expander for b in e.button} == {f"view_{answer_id}_{n}" for n in range(1, len(bot.expander) + 1)}
    assert any("first token" in c.value for c in bot.caption)
    assert not any("Searched for" in c.value for c in bot.caption)
    # A follow-up is searched together with the previous question (the history reaches the pipeline).
    ask(at, "And QLoRA?")
    follow_up = at.chat_message[-1]
    assert any(c.value.replace("\\", "").startswith(f"Searched for: {ON_TOPIC} And QLoRA?")
               for c in follow_up.caption)
    # The conversation stays on screen across reruns, and "New chat" clears it.
    at.run()
    assert len(at.chat_message) == 4
    at.button(key="new_chat").click().run()
    assert len(at.chat_message) == 0


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_off_topic_question_abstains_and_shows_the_nearest_passages(monkeypatch, course_index):
    at = ask(start(monkeypatch, course_index), OFF_TOPIC)
    bot = at.chat_message[-1]
    assert "do not seem to cover" in bot.warning[0].value
    assert len(bot.expander) == 5  # top_k default: every nearest passage is shown
    assert any(c.value == "Nearest passages" for c in bot.caption)


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_sidebar_retrieval_settings_reach_the_pipeline(monkeypatch, course_index):
    at = start(monkeypatch, course_index)
    at.slider(key="top_k").set_value(2)
    at.selectbox(key="mode").set_value("hybrid")
    ask(at, OFF_TOPIC)
    bot = at.chat_message[-1]
    assert len(bot.expander) == 2
    expected = [h.chunk.source for h in search(OFF_TOPIC, course_index, k=2, mode="hybrid")]
    shown = [label(e).split("] ", 1)[1].split(" · ")[0] for e in bot.expander]
    assert shown == expected


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_generator_server_down_is_a_message(monkeypatch, course_index):
    port = free_port()  # a port nobody listens on
    at = start(monkeypatch, course_index, RAG_UI_BACKEND_URLS=f"http://127.0.0.1:{port}/v1")
    at.radio(key="backend").set_value("server").run()
    assert at.selectbox(key="server_url").value == f"http://127.0.0.1:{port}/v1"
    ask(at, ON_TOPIC)
    bot = at.chat_message[-1]
    assert bot.error and "language model failed" in bot.error[0].value
    assert f"127.0.0.1:{port}" in bot.error[0].value
    # The next question still works once the bundled model is picked again.
    at.radio(key="backend").set_value("local")
    ask(at, OFF_TOPIC)
    assert at.chat_message[-1].warning


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_missing_index_offers_to_build_it_then_follows_a_cli_rebuild(monkeypatch, small_corpus, tmp_path):
    settings = Settings(index_dir=tmp_path / "fresh-index", corpus_dir=small_corpus)
    visitor = start(monkeypatch, settings)  # a visitor may not build it (building writes what everyone reads)
    assert "no index" in visitor.warning[0].value.lower()
    assert not [b for b in visitor.button if b.key == "build_index"]
    assert "rag index" in visitor.info[0].value
    at = start(monkeypatch, settings, admin=True)
    assert "no index" in at.warning[0].value.lower()
    ask(at, "What does LoRA freeze?")
    assert "not available" in at.chat_message[-1].error[0].value
    at.button(key="build_index").click().run()
    assert not at.exception and not at.warning
    assert "**Documents:** 3" in facts(at)
    ask(at, OFF_TOPIC)
    assert at.chat_message[-1].warning  # nothing about bread yet

    # `rag index` publishes a new index while the app runs: the app picks it up without a restart.
    (small_corpus / "baking.md").write_text(SOURDOUGH_MD, encoding="utf-8")
    index_corpus(small_corpus, settings)
    ask(at, OFF_TOPIC)
    assert "**Documents:** 4" in facts(at)
    bot = at.chat_message[-1]
    assert not bot.warning and not bot.error
    assert any("baking.md" in label(e) for e in bot.expander)


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_upload_and_remove_documents(monkeypatch, small_index):
    corpus = small_index.corpus_dir
    at = start(monkeypatch, small_index, admin=True)
    assert "**Documents:** 3" in facts(at)
    pdf = make_pdf(["Reward models\nRLHF trains a reward model from human preference rankings."])
    at.file_uploader(key="uploads_0").set_value([
        ("../../rlhf notes.pdf", pdf, "application/pdf"),  # a path: only the name is kept
        ("broken.pdf", b"%PDF-1.4 not really a pdf", "application/pdf"),
        (".hidden.md", b"# Hidden\n\ntext", "text/markdown"),
        ("fine-tuning.md", b"# Something else\n\nA different file with a taken name.", "text/markdown"),
    ])
    at.run()
    at.button(key="add_docs").click().run()
    assert not at.exception, at.exception
    messages = flashes(at)
    assert (corpus / "rlhf notes.pdf").read_bytes() == pdf
    assert not (corpus.parent.parent / "rlhf notes.pdf").exists()
    assert "broken.pdf cannot be read" in messages and not (corpus / "broken.pdf").exists()
    assert "'.hidden.md' is not allowed" in messages and not (corpus / ".hidden.md").exists()
    assert "a different fine-tuning.md is already in the course" in messages
    assert "LoRA" in (corpus / "fine-tuning.md").read_text()  # not overwritten
    assert "4 documents" in messages and "**Documents:** 4" in facts(at)
    assert at.file_uploader(key="uploads_1").value == []  # a fresh, empty uploader

    at.selectbox(key="remove_choice").set_value("rlhf notes.pdf").run()  # picking one enables the button
    at.button(key="remove_doc").click().run()
    assert not at.exception, at.exception
    assert not (corpus / "rlhf notes.pdf").exists()
    assert "Removed rlhf notes.pdf" in flashes(at) and "**Documents:** 3" in facts(at)


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_upload_while_another_build_holds_the_index_says_so(monkeypatch, small_index):
    at = start(monkeypatch, small_index, admin=True)
    at.file_uploader(key="uploads_0").set_value(("extra.txt", b"Beam search keeps the best k sequences.", "text/plain"))
    at.run()
    with build_lock(small_index.index_dir):  # what a running `rag index` holds
        at.button(key="add_docs").click().run()
    assert not at.exception, at.exception
    assert "Indexing failed" in flashes(at) and "another `rag index`" in flashes(at)
    assert (small_index.corpus_dir / "extra.txt").is_file()  # saved; the next build picks it up
    assert "**Documents:** 3" in facts(at)  # the app keeps the index it has


# ---- closed to strangers: the admin secret and the model servers' key ------------------------------

def document_controls(at: AppTest) -> list[str]:
    keys = [w.key for w in [*at.sidebar.button, *at.sidebar.selectbox, *at.sidebar.checkbox]]
    keys += [f"uploader:{u.key}" for u in at.get("file_uploader")]
    return [k for k in keys if k and (k.startswith(("uploader:", "add_docs", "remove_", "replace_uploads")))]


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_documents_are_for_the_admin_only(monkeypatch, small_index):
    closed = start(monkeypatch, small_index)  # no admin secret configured: nobody may change them
    assert document_controls(closed) == [] and not [t for t in closed.sidebar.text_input if t.key == "admin_secret"]
    assert any("switched off" in c.value for c in closed.sidebar.caption)
    assert "**Documents:** 3" in facts(closed)  # the list is still shown

    at = start(monkeypatch, small_index, RAG_ADMIN_SECRET=ADMIN)  # configured, but this visitor has not signed in
    assert document_controls(at) == []
    at.text_input(key="admin_secret").set_value("guess").run()
    assert document_controls(at) == [] and "not the admin secret" in at.sidebar.error[0].value
    at.text_input(key="admin_secret").set_value(ADMIN).run()
    assert {"uploader:uploads_0", "add_docs", "remove_choice", "remove_doc"} <= set(document_controls(at))

    with pytest.raises(RagError, match="switched off"):
        require_admin(Settings(admin_secret=None), ADMIN)
    with pytest.raises(RagError, match="only an admin"):
        require_admin(Settings(admin_secret=ADMIN), "guess")
    require_admin(Settings(admin_secret=ADMIN), ADMIN)


@pytest.fixture
def recorders() -> Iterator[tuple[FakeServer, FakeServer]]:
    """Two of the suite's fake OpenAI servers (tests/fake_openai.py), each streaming one sentence."""
    pair = (FakeServer(), FakeServer())
    for server in pair:
        server.play(("reply", 200, "text/event-stream", sse("LoRA freezes ", "the weights.", finish_reason="stop")))
    yield pair
    for server in pair:
        server.close()


def test_the_key_goes_only_to_the_configured_server(monkeypatch, course_index, recorders):
    configured, other = recorders
    at = start(monkeypatch, course_index, RAG_MODEL=configured.url, RAG_MODEL_NAME="tiny",
               RAG_API_KEY="sk-configured", OPENAI_API_KEY="sk-other-env",
               RAG_UI_BACKEND_URLS=f"{other.url}/")
    assert at.selectbox(key="server_url").options == [configured.url, other.url]  # a list, no free-text URL
    ask(at, ON_TOPIC)
    assert at.chat_message[-1].markdown[0].value.startswith("LoRA freezes the weights")  # [n] may follow
    assert configured.authorizations() == ["Bearer sk-configured"]

    at.selectbox(key="server_url").set_value(other.url).run()
    ask(at, "What does QLoRA add to LoRA?")
    assert not at.chat_message[-1].error
    # no key at all, neither the configured one nor $OPENAI_API_KEY (one request condenses the follow-up)
    assert other.authorizations() and set(other.authorizations()) == {None}
    assert configured.authorizations() == ["Bearer sk-configured"]

    base = Settings(model=configured.url, ui_backend_urls=[other.url])
    assert allowed_servers(Settings(model="bundled", ui_backend_urls=[])) == []  # by default: no server at all
    assert server_key(configured.url + "/", base) == "sk-configured" and server_key(other.url, base) == ""
    with pytest.raises(RagError, match="not one of the model servers"):
        server_key("http://169.254.169.254/v1", base)


# ---- the upload rules and the passage markup, called directly ------------------------------------

def test_safe_filename_strips_paths_and_refuses_tricks():
    assert safe_filename("../../etc/notes.md") == "notes.md"
    assert safe_filename("C:\\Users\\me\\Week 1 (intro).TXT") == "Week 1 (intro).txt"
    assert safe_filename("we$ird<name>.md") == "we_ird_name_.md"
    for bad in ("..", "../", ".bashrc.md", "a..b.md", "notes.exe", "noext", "", "dir/.env.txt"):
        with pytest.raises(RagError):
            safe_filename(bad)
    assert len(safe_filename("x" * 500 + ".md")) <= 120


def test_save_upload_checks_size_content_and_existing_files(tmp_path):
    corpus = tmp_path / "corpus"
    saved = save_upload(corpus, "../outside.md", b"# Notes\n\nSome text.")
    assert saved.status == "added" and saved.path == corpus / "outside.md" and not (tmp_path / "outside.md").exists()
    assert save_upload(corpus, "outside.md", b"# Notes\n\nSome text.").status == "unchanged"
    with pytest.raises(RagError, match="already in the course"):
        save_upload(corpus, "outside.md", b"# Other\n\ntext")
    assert save_upload(corpus, "outside.md", b"# Other\n\ntext", replace=True).status == "replaced"
    with pytest.raises(RagError, match="limit is 20 MB"):
        save_upload(corpus, "big.txt", b"a" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(RagError, match="cannot be read"):
        save_upload(corpus, "binary.txt", bytes(range(256)) * 4)
    with pytest.raises(RagError, match="cannot be read"):
        save_upload(corpus, "empty.md", b"  \n")
    assert save_upload(corpus, "slides.pdf", make_pdf(["Page one text"])).status == "added"
    assert sorted(p.name for p in corpus.iterdir()) == ["outside.md", "slides.pdf"]  # no temp files left


def test_remove_document_stays_inside_the_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "week1").mkdir(parents=True)
    (corpus / "week1" / "a.md").write_text("# A\n\ntext")
    (tmp_path / "secret.md").write_text("keep me")
    with pytest.raises(RagError, match="not inside"):
        remove_document(corpus, "../secret.md")
    remove_document(corpus, "week1/a.md")
    assert not (corpus / "week1" / "a.md").exists() and (tmp_path / "secret.md").exists()


def test_upload_of_a_pdf_bomb_is_refused_with_its_reason(tmp_path):
    """The upload check raised pypdf's LimitReachedError instead of a message."""
    with pytest.raises(RagError, match=r"^bomb.pdf cannot be read: PDF too costly to read .*decompression bomb"):
        save_upload(tmp_path / "corpus", "bomb.pdf", make_flate_bomb_pdf())
    assert not (tmp_path / "corpus" / "bomb.pdf").exists()


def test_removal_and_upload_follow_the_indexing_rule_for_links(tmp_path):
    """Removing a linked document deleted the link's target (or refused a link out of the course as "not
    inside"), and an upload compared itself with the file a link out of the course points at."""
    corpus = tmp_path / "corpus"
    (corpus / "week1").mkdir(parents=True)
    (corpus / "week1" / "a.md").write_text("# A\n\ntext", encoding="utf-8")
    (corpus / "alias.md").symlink_to(corpus / "week1" / "a.md")
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0\n", encoding="utf-8")
    (corpus / "week4-notes.txt").symlink_to(secret)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "s.md").write_text("# S\n\nshared", encoding="utf-8")
    (corpus / "shared").symlink_to(tmp_path / "shared")

    remove_document(corpus, "alias.md")  # the link goes, the file it names stays
    assert not os.path.lexists(corpus / "alias.md") and (corpus / "week1" / "a.md").is_file()
    with pytest.raises(RagError, match="already in the course"):  # not "unchanged": the target is not read
        save_upload(corpus, "week4-notes.txt", b"root:x:0:0\n")
    assert save_upload(corpus, "week4-notes.txt", b"# Notes\n\nmine", replace=True).status == "replaced"
    assert secret.read_text() == "root:x:0:0\n" and not (corpus / "week4-notes.txt").is_symlink()
    (corpus / "week4-notes.txt").unlink()
    (corpus / "week4-notes.txt").symlink_to(secret)
    remove_document(corpus, "week4-notes.txt")  # a link out of the course is an entry of the course: removed
    assert not os.path.lexists(corpus / "week4-notes.txt") and secret.is_file()
    with pytest.raises(RagError, match="outside the course folder"):  # never delete through a link out of it
        remove_document(corpus, "shared/s.md")
    assert (tmp_path / "shared" / "s.md").is_file()


def test_passage_markup_escapes_text_and_marks_the_snippet():
    text = "# Heading\n\nLoRA <b>freezes</b> the weights.\n\n\n\nIt trains [small] matrices."
    html = passage_html(text, "It   trains [small] matrices.")
    assert "<mark>It trains [small] matrices.</mark>" in html
    assert "&lt;b&gt;freezes&lt;/b&gt;" in html and "<b>" not in html
    assert "\n" not in html and "<br><br><br>" not in html
    assert "<mark>" not in passage_html(text, "It trains", highlight=False)
    assert "<mark>" not in passage_html(text, "words that are not there")
