"""The chat's Streamlit side beyond one answer: kept conversations, sources to follow, feedback on answers.

ui/app.py calls these hooks: `start` (who the visitor is, which conversation the URL names), `sidebar`
(the visitor's conversations to reopen, rename, delete or export, and their feedback as `rag eval`
questions), `remember` (each message as it is added; after an answer the page is redrawn from the history,
so its feedback and viewer buttons appear), `show_passage` (a source's passage, rendered, with a button
that opens it in its document), `answer_text` (the answer with [n] markers) and `answer_extras` (thumbs
up/down and a note). The work itself is in plain modules: ui.history (SQLite), ui.records, ui.viewer,
ui.highlight, ui.citations, ui.feedback, ui.transcript, ui.visitor.

Where something cannot be saved (the history file is unusable), the chat goes on and the sidebar says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from rag.answering.answer import Source
from rag.config import Settings
from rag.errors import RagError
from ui.citations import mark_citations
from ui.feedback import eval_jsonl
from ui.highlight import highlighted_markdown
from ui.history import ChatStore, FeedbackRecord, Unreadable, history_path, new_id
from ui.records import ID_PATTERN, message_of, record_of
from ui.render import md_escape, passage_html, safe_markdown
from ui.transcript import conversation_markdown
from ui.viewer import document_view, mime_type, quote_span
from ui.visitor import visitor_token

CHAT_PARAM = "chat"  # the open conversation's id in the URL, so a reload reopens it
SESSION_KEY = "chat_session"
MAX_LISTED = 30


@dataclass
class ChatSession:
    """This run's view of the history: the store (None when unusable, with `problem`), the visitor, the app's
    settings, and the ratings of the open conversation's answers (message id -> FeedbackRecord)."""

    store: ChatStore | None
    visitor: str
    settings: Settings
    problem: str = ""
    ratings: dict[str, FeedbackRecord] = field(default_factory=dict)


@st.cache_resource(show_spinner=False, max_entries=4)
def open_store(path: str) -> ChatStore:
    """The chat history at `path`, opened (and its schema checked) once per process."""
    return ChatStore(Path(path))


def session() -> ChatSession | None:
    """This run's ChatSession (None before `start`)."""
    return st.session_state.get(SESSION_KEY)


def start(base: Settings) -> ChatSession:
    """Identify the visitor, open the history and load the conversation the URL names (on a reload).

    :param base: the app's own settings (history_path, corpus and index folders).
    :returns: this run's ChatSession (its store None, and `problem` set, when the history file is unusable).
    """
    visitor = visitor_token()
    try:
        store, problem = open_store(str(history_path(base))), ""
    except RagError as exc:
        store, problem = None, str(exc)
    chat = ChatSession(store, visitor, base, problem)
    st.session_state[SESSION_KEY] = chat
    wanted = st.query_params.get(CHAT_PARAM)
    if store is not None and wanted != st.session_state.get("chat_id"):
        _load(chat, wanted)
    cid = st.session_state.get("chat_id")
    if store is not None and cid:
        try:
            chat.ratings = {f.message_id: f for f in store.feedback(visitor, cid)}
        except RagError as exc:
            chat.problem = str(exc)
    return chat


def _load(chat: ChatSession, cid: str | None) -> None:
    records = None
    if cid and re.match(ID_PATTERN, cid):
        try:
            records = chat.store.messages(chat.visitor, cid)
        except RagError as exc:
            chat.problem = str(exc)
    if records is None:  # none named, someone else's, or deleted: a new chat
        new_conversation()
        return
    st.session_state.messages = [_unreadable(r, chat) if isinstance(r, Unreadable) else message_of(r)
                                 for r in records]
    st.session_state.chat_id = cid
    st.query_params[CHAT_PARAM] = cid


def _unreadable(row: Unreadable, chat: ChatSession) -> dict[str, Any]:
    return {"id": row.id, "role": "assistant" if row.role != "user" else "user", "content": "",
            "error": f"This message cannot be read from the chat history ({row.reason}); it is kept in "
                     f"{chat.store.path if chat.store else 'the history file'}."}


def new_conversation() -> None:
    """Start an empty conversation (stored once its first question is asked)."""
    st.session_state.messages = []
    st.session_state.chat_id = None
    if CHAT_PARAM in st.query_params:
        del st.query_params[CHAT_PARAM]


def open_conversation(cid: str) -> None:
    """Callback: show the visitor's conversation `cid`."""
    chat = session()
    if chat is not None and chat.store is not None:
        _load(chat, cid)


def remember(msg: dict[str, Any], rerun: bool = False) -> None:
    """Give a message just added to `st.session_state.messages` its id and citations, and store it.

    :param msg: the message (its "supports", rag.answering.attribution.Support, become "citations").
    :param rerun: redraw the page from the history afterwards (after an answer: its feedback and viewer
        buttons are drawn with it).
    """
    msg.setdefault("id", new_id())
    if "supports" in msg:
        msg["citations"] = [{"sentence": s.sentence, "passage": s.passage} for s in msg.pop("supports")]
    chat = session()
    if chat is not None and chat.store is not None:
        try:
            cid = st.session_state.get("chat_id")
            if not cid:
                first = next((m["content"] for m in st.session_state.messages if m.get("role") == "user"), "")
                cid = chat.store.create(chat.visitor, first or "Conversation")
                st.session_state.chat_id = cid
                st.query_params[CHAT_PARAM] = cid
            chat.store.add_message(chat.visitor, cid, record_of(msg))
        except RagError as exc:
            st.session_state.chat_save_problem = f"This message was not saved: {exc}"
    if rerun:
        st.rerun()


# ---- sidebar ---------------------------------------------------------------------------------------

def _rename(cid: str) -> None:
    chat = session()
    title = st.session_state.get(f"title_{cid}", "")
    try:
        if chat and chat.store and title.strip():
            chat.store.rename(chat.visitor, cid, title)
    except RagError as exc:
        st.session_state.chat_save_problem = str(exc)


def _delete(cid: str) -> None:
    chat = session()
    if chat and chat.store:
        chat.store.delete(chat.visitor, cid)
    new_conversation()


def _file_stem(title: str) -> str:
    return re.sub(r"[^\w.-]+", "-", title, flags=re.UNICODE).strip("-.")[:60] or "conversation"


def sidebar(chat: ChatSession) -> None:
    """The visitor's conversations (open one, rename, delete, export as Markdown) and their feedback export."""
    sb = st.sidebar
    for problem in (chat.problem, st.session_state.pop("chat_save_problem", "")):
        if problem:
            sb.warning(safe_markdown(f"Chats are not being kept: {problem}" if problem == chat.problem else problem))
    if chat.store is None:
        return
    try:
        conversations = chat.store.conversations(chat.visitor)
    except RagError as exc:
        sb.warning(safe_markdown(str(exc)))
        return
    current = st.session_state.get("chat_id")
    if conversations:
        with sb.expander("Chats", expanded=True, icon=":material/forum:"):
            for c in conversations[:MAX_LISTED]:
                st.button(md_escape(c.title) or "Untitled", key=f"open_{c.id}", on_click=open_conversation,
                          args=(c.id,), type="secondary" if c.id == current else "tertiary", width="stretch",
                          icon=":material/chat:" if c.id == current else None,
                          help=f"{c.messages} messages, last {c.updated.replace('T', ' ')[:16]} UTC")
            if len(conversations) > MAX_LISTED:
                st.caption(f"and {len(conversations) - MAX_LISTED} older chats")
    if current:
        title = next((c.title for c in conversations if c.id == current), "Conversation")
        with sb.expander("This chat", icon=":material/edit_note:"):
            st.text_input("Title", value=title, key=f"title_{current}", on_change=_rename, args=(current,),
                          max_chars=80)
            messages = list(st.session_state.get("messages", []))
            st.download_button("Export as Markdown", data=lambda: conversation_markdown(title, messages),
                               file_name=f"{_file_stem(title)}.md", mime="text/markdown", on_click="ignore",
                               key="export_markdown", icon=":material/download:")
            st.button("Delete this chat", key="delete_chat", on_click=_delete, args=(current,),
                      icon=":material/delete:")
    store, visitor = chat.store, chat.visitor
    try:
        rated = len(store.feedback(visitor))
    except RagError as exc:
        sb.warning(safe_markdown(str(exc)))
        return
    sb.download_button(f"Export my feedback ({rated} rated)", data=lambda: eval_jsonl(store.feedback(visitor)),
                       file_name="feedback-questions.jsonl", mime="application/jsonl", on_click="ignore",
                       key="export_feedback", icon=":material/rate_review:", width="stretch", disabled=not rated,
                       help="Your thumbs up/down as question lines for `rag eval` (a teacher's evaluation set)")


# ---- one answer --------------------------------------------------------------------------------------

def answer_text(msg: dict[str, Any]) -> str:
    """The answer of `msg` with [n] after each sentence a source supports (ui.citations)."""
    return mark_citations(msg.get("content", ""), msg.get("citations", []))


def show_passage(src: Source, msg_id: str | None = None) -> None:
    """A source's passage rendered (markdown, code, math) with its supporting words highlighted, and, for a
    stored message, a button that opens the passage in its document."""
    span = quote_span(src)
    text = highlighted_markdown(src.text, span)
    if text is None:  # the span cannot be marked in markdown: the escaped form marks it
        st.markdown(passage_html(src.text, src.text[span[0]:span[1]] if span else ""), unsafe_allow_html=True)
    else:
        st.markdown(text)
    if msg_id and st.button("Open in the document", key=f"view_{msg_id}_{src.n}", icon=":material/open_in_new:",
                            type="tertiary"):
        chat = session()
        if chat is not None:
            st.dialog(md_escape(f"[{src.n}] {src.source}"), width="large")(_viewer)(src, chat.settings)


def _viewer(src: Source, settings: Settings) -> None:
    """The viewer's body: where the passage is, the text around it with the quote marked, the file."""
    try:
        view = document_view(settings, src)
    except RagError as exc:
        st.error(safe_markdown(str(exc)))
        return
    where = [w for w in (view.location, src.section if src.section != src.source else "") if w]
    if where:
        st.caption(md_escape(" · ".join(where)))
    if view.note:
        st.warning(safe_markdown(view.note))
    if view.before:
        st.caption(f"… {view.before:,} characters before")
    text = highlighted_markdown(view.text, view.span, view.color)
    with st.container(border=True, key="rag_viewer_text"):
        if text is None:
            a, b = view.span or (0, 0)
            st.markdown(passage_html(view.text, view.text[a:b]), unsafe_allow_html=True)
        else:
            st.markdown(text)
    if view.after:
        st.caption(f"… {view.after:,} characters after")
    path = view.path
    st.download_button(f"Download {path.name}", data=path.read_bytes, file_name=path.name, mime=mime_type(path),
                       on_click="ignore", key="download_source", icon=":material/download:")


def _question_before(msg_id: str) -> str:
    messages = st.session_state.get("messages", [])
    at = next((i for i, m in enumerate(messages) if m.get("id") == msg_id), None)
    if at is None:
        return ""
    return next((m.get("content", "") for m in reversed(messages[:at]) if m.get("role") == "user"), "")


def _save_rating(msg_id: str) -> None:
    chat, msg = session(), next((m for m in st.session_state.get("messages", []) if m.get("id") == msg_id), None)
    cid = st.session_state.get("chat_id")
    if chat is None or chat.store is None or msg is None or not cid:
        return
    value = st.session_state.get(f"rating_{msg_id}")  # 1 thumbs up, 0 thumbs down, None: taken back
    before = chat.ratings.get(msg_id)
    try:
        if value is None:
            chat.store.clear_feedback(chat.visitor, msg_id)
            return
        rating = 1 if value == 1 else -1
        evidence = [s.quote.text if s.quote is not None else s.snippet for s in msg.get("sources", [])
                    if s.cited and not msg.get("abstained")]
        note = st.session_state.get(f"note_{msg_id}", before.note if before else "")
        expected = st.session_state.get(f"expected_{msg_id}", before.expected if before else "")
        chat.store.set_feedback(chat.visitor, FeedbackRecord(
            message_id=msg_id, conversation_id=cid, rating=rating, note=note.strip(),
            expected=expected.strip() if rating < 0 else "", question=_question_before(msg_id),
            answer=msg.get("content", ""), evidence=evidence, abstained=bool(msg.get("abstained"))))
    except RagError as exc:
        st.session_state.chat_save_problem = str(exc)


def _clear_note_fields(msg_id: str) -> None:
    for key in (f"note_{msg_id}", f"expected_{msg_id}"):
        st.session_state.pop(key, None)


def _rated(msg_id: str) -> None:
    _clear_note_fields(msg_id)  # a new rating keeps the stored note; the form shows it again
    _save_rating(msg_id)


def answer_extras(msg: dict[str, Any]) -> None:
    """Thumbs up/down on a stored answer, and once rated a note (and for thumbs down the expected answer)."""
    chat = session()
    if chat is None or chat.store is None or msg.get("role") != "assistant" or msg.get("error") or not msg.get("id"):
        return
    mid = msg["id"]
    saved = chat.ratings.get(mid)
    default = None if saved is None else (1 if saved.rating > 0 else 0)
    value = st.feedback("thumbs", key=f"rating_{mid}", default=default, on_change=_rated, args=(mid,))
    if value is None:
        return
    down = value == 0
    with st.popover("Edit the note" if saved and (saved.note or saved.expected) else "Add a note",
                    icon=":material/edit:", key=f"note_popover_{mid}"):
        with st.form(key=f"note_form_{mid}", border=False):
            st.text_area("Note (optional)", value=saved.note if saved else "", key=f"note_{mid}", max_chars=2000,
                         placeholder="What was good or wrong about this answer?")
            if down:
                st.text_area("The answer you expected (optional)", value=saved.expected if saved else "",
                             key=f"expected_{mid}", max_chars=4000)
            st.form_submit_button("Save", on_click=_save_rating, args=(mid,))
    if saved and saved.note:
        st.caption(f"Your note: {md_escape(saved.note)}")
