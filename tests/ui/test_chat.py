"""The chat's kept conversations, followable sources and feedback (ui/history.py, ui/records.py, ui/viewer.py,
ui/highlight.py, ui/citations.py, ui/feedback.py, ui/transcript.py, ui/chat.py): real SQLite files, real
course files and PDFs in temp folders, the real `rag` command, and the app under AppTest with the real
bundled model (tests marked llm). The browser's side is tests/ui/test_browser.py."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.answering.answer import Source
from rag.answering.grounding import Quote
from rag.cli import cli
from rag.config import Settings, load_settings
from rag.errors import RagError
from rag.evaluation.retrieval import load_questions
from tests.conftest import LORA_MD
from tests.pdfgen import make_pdf
from ui.citations import mark_citations
from ui.feedback import eval_jsonl
from ui.highlight import highlighted_markdown
from ui.history import ChatStore, FeedbackRecord, Unreadable, history_path, new_id
from ui.records import MessageRecord, SourceRecord, message_of, record_of
from ui.transcript import conversation_markdown
from ui.viewer import course_file, course_root, document_view
from ui.visitor import is_token, new_token

ALICE, BOB = new_token(), new_token()
QUOTE = "LoRA (low-rank adaptation) freezes all the weights of the pre-trained model and trains two small\nlow-rank matrices"


def passage_source(text: str, quote: str | None = None, source: str = "fine-tuning.md", n: int = 1) -> Source:
    """A Source as the pipeline makes it: `quote` verified at its offsets in `text` when given."""
    q = None
    if quote is not None:
        start = text.index(quote)
        q = Quote(n, quote, start, start + len(quote), 0.9)
    return Source(n, 7, source, "Fine-tuning", 0.71, quote or text[:80], text, cited=quote is not None, quote=q)


def conversation(store: ChatStore, visitor: str, question: str = "What does LoRA freeze?") -> tuple[str, str]:
    """A stored conversation of `visitor` (a question and its answer); returns (conversation id, answer id)."""
    cid = store.create(visitor, question)
    store.add_message(visitor, cid, MessageRecord(id=new_id(), role="user", content=question))
    answer = MessageRecord(id=new_id(), role="assistant", content="LoRA freezes the weights.",
                           sources=[SourceRecord.of(passage_source(LORA_MD, QUOTE))])
    store.add_message(visitor, cid, answer)
    return cid, answer.id


# ---- the store: visitors apart, durable, refusing what it did not write ------------------------------

def test_each_visitor_sees_and_changes_only_their_own_conversations(tmp_path):
    store = ChatStore(tmp_path / "chats.sqlite3")
    cid, answer = conversation(store, ALICE)
    assert [c.title for c in store.conversations(ALICE)] == ["What does LoRA freeze?"]
    assert store.conversations(ALICE)[0].messages == 2
    assert store.conversations(BOB) == [] and store.messages(BOB, cid) is None
    assert not store.rename(BOB, cid, "mine now") and not store.delete(BOB, cid)
    with pytest.raises(RagError, match="no longer exists"):
        store.add_message(BOB, cid, MessageRecord(id=new_id(), role="user", content="hi"))
    with pytest.raises(RagError, match="not in your conversations"):
        store.set_feedback(BOB, FeedbackRecord(message_id=answer, conversation_id=cid, rating=-1, question="q",
                                               answer="a"))
    assert store.title(ALICE, cid) == "What does LoRA freeze?" and len(store.messages(ALICE, cid)) == 2

    store.set_feedback(ALICE, FeedbackRecord(message_id=answer, conversation_id=cid, rating=1, question="q", answer="a"))
    assert store.feedback(BOB) == [] and [f.rating for f in store.feedback(ALICE)] == [1]
    assert [f.message_id for f in store.feedback(None)] == [answer]  # the operator's export sees everyone's
    store.clear_feedback(BOB, answer)  # not Bob's: nothing happens
    assert store.feedback(ALICE)


def test_conversations_survive_a_restart_rename_and_delete_with_their_feedback(tmp_path):
    path = tmp_path / "data" / "chats.sqlite3"  # the folder is created
    first = ChatStore(path)
    cid, answer = conversation(first, ALICE)
    first.set_feedback(ALICE, FeedbackRecord(message_id=answer, conversation_id=cid, rating=-1, note="too short",
                                             question="What does LoRA freeze?", answer="LoRA freezes the weights."))
    again = ChatStore(path)  # a restart: a new process opens the same file
    records = again.messages(ALICE, cid)
    assert [r.role for r in records] == ["user", "assistant"]
    source = records[1].sources[0].to_source()
    assert source.quote.text == QUOTE and source.text[source.quote.start:source.quote.end] == QUOTE
    assert again.rename(ALICE, cid, "  LoRA\n and\tadapters  " + "x" * 100)
    title = again.conversations(ALICE)[0].title
    assert title.startswith("LoRA and adapters x") and len(title) == 80 and "\n" not in title
    with pytest.raises(RagError, match="cannot be empty"):
        again.rename(ALICE, cid, " \n ")
    assert again.delete(ALICE, cid)
    assert again.conversations(ALICE) == [] and again.feedback(None) == []
    with sqlite3.connect(path) as conn:  # nothing of it is left in the file
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
    path.rename(tmp_path / "moved-away.sqlite3")  # moved away while the app runs: a new, working file
    assert again.conversations(ALICE) == [] and again.create(ALICE, "again") and path.is_file()


def test_a_file_the_app_did_not_write_is_refused_and_left_alone(tmp_path):
    notes = tmp_path / "notes.sqlite3"
    notes.write_text("my lecture notes\n" * 100, encoding="utf-8")
    with pytest.raises(RagError, match="not a readable SQLite database.*RAG_HISTORY_PATH"):
        ChatStore(notes)
    assert notes.read_text(encoding="utf-8") == "my lecture notes\n" * 100

    other = tmp_path / "grades.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE grades (student TEXT, grade REAL)")
    with pytest.raises(RagError, match="not a course-rag chat history \\(tables: grades\\)"):
        ChatStore(other)

    newer = tmp_path / "newer.sqlite3"
    ChatStore(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RagError, match="schema version 99, newer"):
        ChatStore(newer)

    with pytest.raises(RagError, match="is a folder"):
        ChatStore(tmp_path)
    with pytest.raises(RagError, match="history_path.*is a folder"):
        load_settings(history_path=tmp_path)


def test_a_stored_message_that_does_not_validate_is_reported_and_kept(tmp_path):
    store = ChatStore(tmp_path / "chats.sqlite3")
    cid, answer = conversation(store, ALICE)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE messages SET body = ? WHERE id = ?",
                     (json.dumps({"id": answer, "role": "assistant", "content": 3}), answer))
    rows = store.messages(ALICE, cid)
    assert isinstance(rows[1], Unreadable) and rows[1].id == answer and "content" in rows[1].reason
    with sqlite3.connect(store.path) as conn:  # still there, for whoever repairs it
        assert conn.execute("SELECT COUNT(*) FROM messages WHERE id = ?", (answer,)).fetchone() == (1,)


def test_history_path_defaults_next_to_the_index(tmp_path):
    assert history_path(Settings(index_dir=tmp_path / "index")) == tmp_path / "chats.sqlite3"
    assert history_path(Settings(index_dir=tmp_path / "index", history_path=tmp_path / "h.db")) == tmp_path / "h.db"


def test_visitor_tokens_are_long_random_and_checked():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(is_token(t) and len(t) == 22 for t in tokens)
    for bad in ("", "abc", "a" * 21, "x" * 87, "with space in it 12345678", "../../etc/passwd/aaaaaaaaaa", None, 12):
        assert not is_token(bad)


def test_a_message_round_trips_through_its_record():
    src = passage_source(LORA_MD, QUOTE)
    msg = {"id": new_id(), "role": "assistant", "content": "It freezes them.", "abstained": False,
           "notes": ["Searched for: x"], "timings": {"retrieve": 0.2}, "sources": [src],
           "citations": [{"sentence": "It freezes them.", "passage": 1}]}
    back = message_of(MessageRecord.model_validate_json(record_of(msg).model_dump_json()))
    assert back == msg


# ---- [n] markers ---------------------------------------------------------------------------------------

def test_supported_sentences_get_their_marker_once_and_code_gets_none():
    text = "LoRA freezes the weights. It trains adapters [2].\n\n```\nfreeze(model).\n```\nQLoRA also `quantizes.`"
    cites = [{"sentence": "LoRA freezes the weights.", "passage": 1}, {"sentence": "It trains adapters.", "passage": 2},
             {"sentence": "freeze(model).", "passage": 1}, {"sentence": "QLoRA also `quantizes.`", "passage": 3},
             {"sentence": "Not in the answer.", "passage": 1}]
    # after inline code, never inside it
    assert mark_citations(text, cites) == text.replace("weights.", "weights [1].") + " [3]"
    grounded = '"LoRA freezes all the weights." [1]\n\nThe frozen\nweights'
    assert mark_citations(grounded, [{"sentence": '"LoRA freezes all the weights."', "passage": 1},
                                     {"sentence": "The frozen\nweights", "passage": 1}]) == grounded + " [1]"
    repeated = '"LoRA freezes all the weights." [4]\n\nLoRA freezes all the weights.'  # the short answer repeats it
    assert mark_citations(repeated, [{"sentence": '"LoRA freezes all the weights."', "passage": 4},
                                     {"sentence": "LoRA freezes all the weights.", "passage": 4}]) == \
        repeated[:-1] + " [4]."
    # a quote of two sentences: the first is not marked inside the quote, the quote's own marker follows it
    pair = '"Full fine-tuning updates all weights. It needs memory like pre-training." [1]\n\nA. Full fine-tuning'
    assert mark_citations(pair, [{"sentence": "Full fine-tuning updates all weights.", "passage": 1},
                                 {"sentence": "It needs memory like pre-training.", "passage": 1}]) == pair


# ---- rendered passages: math, code, the highlight, and still nothing loaded ------------------------------

def test_highlighted_markdown_keeps_math_and_code_and_marks_the_quote():
    text = ("# Attention\n\nThe weights are $\\mathrm{softmax}(QK^T)$ of the [scaled] scores.\nEach row sums to one.\n"
            "- first item\n- second item\n\n```python\nprint(1)\n```\n")
    quote = "The weights are $\\mathrm{softmax}(QK^T)$ of the [scaled] scores.\nEach row sums to one.\n- first item"
    start = text.index(quote)
    md = highlighted_markdown(text, (start, start + len(quote)))
    assert md.startswith("**Attention**\n\n")  # a passage's heading is not the page's
    assert ":color[The weights are $\\mathrm{softmax}(QK^T)$ of the \\[scaled\\] scores. Each row sums to one.]" in md
    assert "\n- :color[first item]{" in md and "\n- second item" in md
    assert "```python\nprint(1)\n```" in md
    assert highlighted_markdown(text, (text.index("print"), text.index("print") + 5)) is None  # in code: HTML form
    assert highlighted_markdown(text, (text.index("softmax"), text.index("of the"))) is None  # cuts $…$ in two


def test_highlighted_course_text_loads_nothing():
    from markdown_it import MarkdownIt

    text = "LoRA ![leak](http://h/p.png) freezes <img src=http://h/raw.png> the weights <iframe src=x>."
    md = highlighted_markdown(text, (0, len(text)))
    tokens = [t for block in MarkdownIt("commonmark").parse(md) for t in [block, *(block.children or [])]]
    assert not [t for t in tokens if t.type in ("image", "html_inline", "html_block")]
    assert "leak" in md and "&lt;img" in md


# ---- the viewer: the file, inside the course, the passage in its text ---------------------------------

def test_the_viewer_opens_only_files_of_the_course(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "week1").mkdir(parents=True)
    (corpus / "week1" / "notes.md").write_text(LORA_MD, encoding="utf-8")
    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\n\nnot course text", encoding="utf-8")
    (corpus / "linked.md").symlink_to(secret)
    assert course_file(corpus, "week1/notes.md") == (corpus / "week1" / "notes.md").resolve()
    for bad in ("../secret.md", "/etc/passwd", "week1/../../secret.md", "week1\\notes.md", "", "a\x00b"):
        with pytest.raises(RagError, match="not a file of the course folder"):
            course_file(corpus, bad)
    with pytest.raises(RagError, match="leads outside the course folder"):
        course_file(corpus, "linked.md")
    assert course_file(corpus, "linked.md", follow_outside_links=True) == corpus.resolve() / "linked.md"
    with pytest.raises(RagError, match="no longer in the course folder"):
        course_file(corpus, "week1/gone.md")


def test_the_viewer_shows_the_passage_in_its_document_with_the_quote(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    before, after = ("".join(f"{part} {i} says something about adapters.\n\n" for i in range(80))
                     for part in ("Before", "After"))
    (corpus / "fine-tuning.md").write_text(before + LORA_MD + after, encoding="utf-8")
    settings = Settings(index_dir=tmp_path / "index", corpus_dir=corpus)
    passage = LORA_MD[LORA_MD.index("## Parameter"):LORA_MD.index("## Full")]
    view = document_view(settings, passage_source(passage, QUOTE))
    assert view.path == (corpus / "fine-tuning.md").resolve() and view.note == ""
    assert passage in view.text and "Before 79" in view.text and "After 0 " in view.text
    assert "Before 0 " not in view.text and "After 79" not in view.text
    assert view.text[view.span[0]:view.span[1]] == QUOTE
    assert view.before > 0 and view.after > 0 and view.text.startswith("Before")  # whole paragraphs
    assert view.text.endswith("adapters.")

    unquoted = document_view(settings, Source(2, 7, "fine-tuning.md", "", 0.3, "", passage, cited=False))
    assert unquoted.text[unquoted.span[0]:unquoted.span[1]] == passage  # the passage itself, in gray

    (corpus / "fine-tuning.md").write_text("# Rewritten\n\nAll new text.", encoding="utf-8")
    changed = document_view(settings, passage_source(passage, QUOTE))
    assert "changed since this answer" in changed.note and changed.text == passage
    assert changed.text[changed.span[0]:changed.span[1]] == QUOTE


def test_the_viewer_names_the_page_of_a_pdf_passage(tmp_path):
    from rag.ingest.loaders import read_file

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "slides.pdf").write_bytes(make_pdf(["Intro slide text", "LoRA freezes the base weights", "Summary"]))
    text = read_file(corpus / "slides.pdf", "slides.pdf").text
    passage = text[text.index("LoRA"):text.index("weights") + len("weights")]
    view = document_view(Settings(index_dir=tmp_path / "index", corpus_dir=corpus),
                         passage_source(passage, "freezes the base", source="slides.pdf"))
    assert view.location == "page 2 of 3" and view.text[view.span[0]:view.span[1]] == "freezes the base"


def test_the_viewer_reads_the_folder_the_index_was_built_from(small_corpus, tmp_path):
    from rag.api import index_corpus

    settings = Settings(index_dir=tmp_path / "index", corpus_dir=tmp_path / "elsewhere")
    assert course_root(settings) == tmp_path / "elsewhere"  # no index yet: the setting
    index_corpus(small_corpus, settings)
    assert course_root(settings).resolve() == small_corpus.resolve()


# ---- exports ---------------------------------------------------------------------------------------------

def test_feedback_becomes_rag_eval_questions(tmp_path):
    store = ChatStore(tmp_path / "chats.sqlite3")
    cid, good = conversation(store, ALICE, "What does LoRA freeze?")
    cid2, bad = conversation(store, BOB, "What does QLoRA add?")
    store.set_feedback(ALICE, FeedbackRecord(message_id=good, conversation_id=cid, rating=1, question="What does LoRA freeze?",
                                             answer='"LoRA freezes\nthe weights." [1]\n\nThe weights [1].',
                                             evidence=["LoRA freezes\nthe weights.", "LoRA freezes the weights."]))
    store.set_feedback(BOB, FeedbackRecord(message_id=bad, conversation_id=cid2, rating=-1, note="Wrong model part.",
                                           expected="4-bit quantisation of the frozen model.",
                                           question="What does QLoRA add?", answer="It adds nothing [2]."))
    out = tmp_path / "feedback.jsonl"
    out.write_text(eval_jsonl(store.feedback(None)), encoding="utf-8")
    up, down = load_questions(out)  # the file `rag eval` reads
    assert up == {"id": f"feedback-{good[:12]}", "question": "What does LoRA freeze?", "feedback": "up",
                  "answer": '"LoRA freezes\nthe weights."\n\nThe weights.', "evidence": ["LoRA freezes the weights."],
                  "source": f"feedback:{good}"}
    assert down == {"id": f"feedback-{bad[:12]}", "question": "What does QLoRA add?", "feedback": "down",
                    "answer": "4-bit quantisation of the frozen model.", "model_answer": "It adds nothing.",
                    "note": "Wrong model part.", "source": f"feedback:{bad}"}
    assert eval_jsonl(store.feedback(ALICE), "down") == ""
    cid3, off = conversation(store, ALICE, "How do I bake bread?")
    store.set_feedback(ALICE, FeedbackRecord(message_id=off, conversation_id=cid3, rating=1, abstained=True,
                                             question="How do I bake bread?", answer="The course does not cover it."))
    rows = [json.loads(line) for line in eval_jsonl(store.feedback(ALICE), "up").splitlines()]
    assert rows[-1] == {"id": f"feedback-{off[:12]}", "question": "How do I bake bread?", "feedback": "up",
                        "model_answer": "The course does not cover it.", "abstained": True,
                        "source": f"feedback:{off}"}  # an abstention is never an expected answer
    assert [json.loads(line)["feedback"] for line in eval_jsonl(store.feedback(None), "down").splitlines()] == ["down"]


def test_rag_feedback_export_writes_every_visitors_ratings(tmp_path):
    store = ChatStore(tmp_path / "chats.sqlite3")
    for visitor in (ALICE, BOB):
        cid, answer = conversation(store, visitor)
        store.set_feedback(visitor, FeedbackRecord(message_id=answer, conversation_id=cid, rating=-1,
                                                   question="What does LoRA freeze?", answer="x"))
    out = tmp_path / "set" / "feedback.jsonl"
    out.parent.mkdir()
    r = CliRunner().invoke(cli, ["feedback", "export", str(out), "--history", str(store.path), "--rating", "down"])
    assert r.exit_code == 0, r.output
    assert len(load_questions(out)) == 2 and "2 question(s) written" in r.output
    r = CliRunner().invoke(cli, ["feedback", "export", "-", "--history", str(store.path)])
    assert r.exit_code == 0 and r.output.count('"feedback": "down"') == 2
    r = CliRunner().invoke(cli, ["feedback", "export", str(out), "--history", str(tmp_path / "none.sqlite3")])
    assert r.exit_code == 1 and "Error: no chat history at" in r.output
    assert not (tmp_path / "none.sqlite3").exists()  # looking did not create it


def test_a_conversation_exports_as_markdown():
    src = passage_source(LORA_MD, QUOTE, source="week_1/fine*tuning.md")
    messages = [{"role": "user", "content": "What does LoRA freeze?"},
                {"role": "assistant", "content": "LoRA freezes the weights.", "sources": [src],
                 "citations": [{"sentence": "LoRA freezes the weights.", "passage": 1}]},
                {"role": "user", "content": "And QLoRA?"},
                {"role": "assistant", "content": "", "error": "The language model failed: down"}]
    md = conversation_markdown("LoRA", messages, now=datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc))
    assert md.startswith("# LoRA\n\n_Exported from the course assistant, 2026-01-02 03:04 UTC._\n")
    assert "## Question\n\nWhat does LoRA freeze?\n\n### Answer\n\nLoRA freezes the weights [1].\n" in md
    assert "- [1] `week_1/fine*tuning.md › Fine-tuning` (quoted)\n\n  > LoRA (low-rank adaptation) freezes" in md
    assert "**Error:** The language model failed: down" in md


# ---- the app: kept across reloads, apart per visitor, rated, renamed, deleted ---------------------------

@pytest.fixture
def app_env(monkeypatch, small_corpus, tmp_path) -> Path:
    """The app's settings for AppTest: the small corpus indexed, the chat history in tmp_path."""
    from rag.api import index_corpus

    settings = Settings(index_dir=tmp_path / "index", corpus_dir=small_corpus)
    index_corpus(small_corpus, settings)
    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    env = {"RAG_INDEX_DIR": str(settings.index_dir), "RAG_CORPUS_DIR": str(small_corpus), "RAG_MAX_NEW_TOKENS": "6",
           "RAG_CONFIG": str(tmp_path / "empty.toml"), "RAG_HISTORY_PATH": str(tmp_path / "chats.sqlite3")}
    for name in ("RAG_MODE", "RAG_TOP_K", "RAG_MODEL", "RAG_ADMIN_SECRET", "RAG_UI_BACKEND_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return tmp_path / "chats.sqlite3"


def open_app(query: dict[str, str] | None = None):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    at = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=180)
    at.query_params.update(query or {})
    return at.run()


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_the_app_keeps_each_visitors_conversations_across_reloads(app_env):
    at = open_app()
    visitor = at.query_params["visitor"]
    at.chat_input(key="question").set_value("What does LoRA freeze?").run()
    assert not at.exception and [m.name for m in at.chat_message] == ["user", "assistant"]
    answer_id = at.session_state.messages[1]["id"]
    assert at.query_params["chat"] == at.session_state.chat_id
    assert [f.key for f in at.feedback] == [f"rating_{answer_id}"]

    again = open_app(dict(at.query_params))  # a reload: a new session with the same URL
    assert [m.markdown[0].value for m in again.chat_message] == [m.markdown[0].value for m in at.chat_message]
    again.feedback(key=f"rating_{answer_id}").set_value(0).run()  # thumbs down
    again.text_area(key=f"note_{answer_id}").input("It misses the adapters.")
    again.text_area(key=f"expected_{answer_id}").input("The pre-trained weights.")
    again.button[[b.label for b in again.button].index("Save")].click().run()
    store = ChatStore(app_env)
    [fb] = store.feedback(visitor)
    assert (fb.rating, fb.note, fb.expected, fb.question) == (-1, "It misses the adapters.", "The pre-trained weights.",
                                                              "What does LoRA freeze?")
    assert any("Your note: It misses the adapters" in c.value for c in again.chat_message[1].caption)

    stranger = open_app()  # another visitor: a new token, none of the above
    assert stranger.query_params["visitor"] != visitor and not stranger.chat_message
    assert not [b for b in stranger.sidebar.button if b.key and b.key.startswith("open_")]
    forged = open_app({"visitor": "short", "chat": at.session_state.chat_id})  # a bad token is replaced
    assert forged.query_params["visitor"] != "short" and not forged.chat_message and "chat" not in forged.query_params

    again.text_input(key=f"title_{again.session_state.chat_id}").input("LoRA questions").run()
    assert [c.title for c in store.conversations(visitor)] == ["LoRA questions"]
    again.button(key="delete_chat").click().run()
    assert store.conversations(visitor) == [] and store.feedback(None) == [] and not again.chat_message
    assert "chat" not in again.query_params


@pytest.mark.llm  # the page loads the bundled model when it opens
def test_an_unusable_history_file_is_said_and_the_chat_goes_on(app_env):
    app_env.write_text("not a database\n" * 50, encoding="utf-8")
    at = open_app()
    assert any("Chats are not being kept" in w.value and "not a readable SQLite database" in w.value
               for w in at.sidebar.warning)
    at.chat_input(key="question").set_value("What does LoRA freeze?").run()
    assert not at.exception and [m.name for m in at.chat_message] == ["user", "assistant"]
    assert app_env.read_text(encoding="utf-8") == "not a database\n" * 50


def test_the_viewer_names_the_slide_of_a_deck_passage(tmp_path):
    from rag.ingest.loaders import read_file
    from tests.formatgen import make_pptx

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "deck.pptx").write_bytes(make_pptx([{"title": "Intro", "body": ["Welcome to the course"]},
                                                  {"title": "LoRA", "body": ["LoRA freezes the base weights"]},
                                                  {"title": "Summary", "body": ["That was all"]}]))
    text = read_file(corpus / "deck.pptx", "deck.pptx").text
    passage = text[text.index("LoRA freezes"):text.index("weights") + len("weights")]
    view = document_view(Settings(index_dir=tmp_path / "index", corpus_dir=corpus),
                         passage_source(passage, "freezes the base", source="deck.pptx"))
    assert view.location == "slide 2 of 3" and view.text[view.span[0]:view.span[1]] == "freezes the base"
