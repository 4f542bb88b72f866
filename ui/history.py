"""The app's conversations and answer feedback, kept in one local SQLite file (stdlib sqlite3).

Every conversation belongs to one visitor (the random token of ui/visitor.py): every read and write names
the visitor and touches only that visitor's rows, so no visitor lists, opens, renames, deletes or rates
another's conversation. Only `feedback(visitor=None)` reads everyone's, for the operator's
`rag feedback export`.

Durability: each change is one transaction (`with connection:` commits or rolls back as a whole) with
`synchronous=FULL`, so a crash leaves the file as it was before or after the change, never between.
The schema is versioned with `PRAGMA user_version`; a file from a newer version, or a SQLite file that is
not a chat history, is refused with a message instead of being changed. Stored messages are JSON bodies
validated by pydantic on load (ui/records.py); a body that does not validate is returned as an
`Unreadable` row with its reason and left in the file, never dropped.

A connection is opened for each call: Streamlit runs each visitor's script in its own thread, and a
sqlite3 connection belongs to the thread that made it.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rag.config import Settings
from rag.errors import RagError
from ui.records import ID_PATTERN, MessageRecord, parse_record

SCHEMA_VERSION = 1
MAX_TITLE_CHARS = 80
HISTORY_FILE = "chats.sqlite3"
_SCHEMA = """
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    visitor TEXT NOT NULL,
    title TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX conversations_by_visitor ON conversations (visitor, updated);
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    body TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE TABLE feedback (
    message_id TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    note TEXT NOT NULL DEFAULT '',
    expected TEXT NOT NULL DEFAULT '',
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    evidence TEXT NOT NULL,
    abstained INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL
);
"""


def history_path(settings: Settings) -> Path:
    """The chat history file of these settings: `history_path`, else chats.sqlite3 next to the index folder."""
    return settings.history_path or Path(settings.index_dir).parent / HISTORY_FILE


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    """A fresh conversation or message id (32 hex digits)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Conversation:
    """One conversation in a visitor's list: id, title, ISO timestamps and how many messages it holds."""

    id: str
    title: str
    created: str
    updated: str
    messages: int


@dataclass(frozen=True)
class Unreadable:
    """A stored message whose body does not validate: its id, role and the reason (it stays in the file)."""

    id: str
    role: str
    reason: str


class FeedbackRecord(BaseModel):
    """A reader's rating of one answer, with a snapshot of the question, the answer and its evidence.

    :param rating: 1 (thumbs up) or -1 (thumbs down).
    :param note: the reader's optional note.
    :param expected: the answer the reader expected (optional, thumbs down).
    :param evidence: the passage words that supported the answer (the quote and cited snippets).
    :param abstained: the answer was the pipeline's "the course does not seem to cover this".
    """

    model_config = ConfigDict(extra="forbid")

    message_id: str = Field(pattern=ID_PATTERN)
    conversation_id: str = Field(pattern=ID_PATTERN)
    rating: Literal[-1, 1]
    note: str = ""
    expected: str = ""
    question: str
    answer: str
    evidence: list[str] = []
    abstained: bool = False
    updated: str = ""


class ChatStore:
    """Conversations, their messages and feedback in one SQLite file, every call scoped to a visitor.

    :param path: the file (created with its folder when missing).
    :raises RagError: the file cannot be created or opened, is not a SQLite database, holds other tables,
        or was written by a newer schema version.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RagError(f"cannot create the folder of the chat history {self.path}: {exc.strerror or exc}; "
                           "set RAG_HISTORY_PATH to a writable file") from None
        if self.path.is_dir():
            raise RagError(f"chat history {self.path} is a folder; set RAG_HISTORY_PATH to a file")
        with self._connect():
            pass  # the schema is checked (and made in a new file) by every connection

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to a checked file in one transaction: committed when the block ends, rolled back when
        it raises. (A file moved away while the app runs is made again, not written without tables.)"""
        try:
            conn = sqlite3.connect(self.path, timeout=15)
        except sqlite3.Error as exc:
            raise RagError(f"cannot open the chat history {self.path}: {exc}; set RAG_HISTORY_PATH to a "
                           "writable file") from None
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            with conn:
                self._migrate(conn)
            with conn:
                yield conn
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise RagError(f"chat history {self.path} is not a readable SQLite database ({exc}): move it "
                               "away (the app starts a new one) or set RAG_HISTORY_PATH to another file") from None
            raise RagError(f"chat history {self.path}: {exc}") from None
        finally:
            conn.close()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create the tables in a new file (one transaction, so two apps starting at once cannot both do it)."""
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RagError(f"chat history {self.path} has schema version {version}, newer than this course-rag's "
                           f"{SCHEMA_VERSION}: upgrade course-rag or set RAG_HISTORY_PATH to another file")
        if version == SCHEMA_VERSION:
            return
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables:  # version 0 with tables: another program's database
            raise RagError(f"{self.path} is a SQLite file that is not a course-rag chat history (tables: "
                           f"{', '.join(sorted(tables))}); set RAG_HISTORY_PATH to another file")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ---- conversations -----------------------------------------------------------------------------

    def conversations(self, visitor: str) -> list[Conversation]:
        """The visitor's conversations, the most recently active first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT c.id, c.title, c.created, c.updated, COUNT(m.id) FROM conversations c "
                "LEFT JOIN messages m ON m.conversation_id = c.id WHERE c.visitor = ? "
                "GROUP BY c.id ORDER BY c.updated DESC, c.created DESC", (visitor,)).fetchall()
        return [Conversation(*row) for row in rows]

    def create(self, visitor: str, title: str) -> str:
        """A new, empty conversation of `visitor` titled `title` (cut to MAX_TITLE_CHARS); returns its id."""
        cid, now = new_id(), utc_now()
        with self._connect() as conn:
            conn.execute("INSERT INTO conversations (id, visitor, title, created, updated) VALUES (?, ?, ?, ?, ?)",
                         (cid, visitor, clean_title(title), now, now))
        return cid

    def rename(self, visitor: str, conversation_id: str, title: str) -> bool:
        """Give the visitor's conversation a new title; False when the visitor has no such conversation.

        :raises RagError: an empty title.
        """
        title = clean_title(title)
        if not title:
            raise RagError("a conversation's title cannot be empty")
        with self._connect() as conn:
            cur = conn.execute("UPDATE conversations SET title = ? WHERE id = ? AND visitor = ?",
                               (title, conversation_id, visitor))
        return cur.rowcount == 1

    def delete(self, visitor: str, conversation_id: str) -> bool:
        """Delete the visitor's conversation with its messages and their feedback; False when there is none."""
        with self._connect() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = ? AND visitor = ?", (conversation_id, visitor))
        return cur.rowcount == 1

    def title(self, visitor: str, conversation_id: str) -> str | None:
        """The title of the visitor's conversation, or None when the visitor has no such conversation."""
        with self._connect() as conn:
            row = conn.execute("SELECT title FROM conversations WHERE id = ? AND visitor = ?",
                               (conversation_id, visitor)).fetchone()
        return row[0] if row else None

    # ---- messages ----------------------------------------------------------------------------------

    def add_message(self, visitor: str, conversation_id: str, record: MessageRecord) -> None:
        """Append a message to the visitor's conversation (and mark the conversation as just active).

        :raises RagError: the visitor has no such conversation (deleted meanwhile, or someone else's).
        """
        now = utc_now()
        with self._connect() as conn:
            if not conn.execute("SELECT 1 FROM conversations WHERE id = ? AND visitor = ?",
                                (conversation_id, visitor)).fetchone():
                raise RagError("this conversation no longer exists (deleted in another tab?): start a new chat")
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?",
                               (conversation_id,)).fetchone()[0]
            conn.execute("INSERT INTO messages (id, conversation_id, seq, role, body, created) VALUES (?, ?, ?, ?, ?, ?)",
                         (record.id, conversation_id, seq, record.role, record.model_dump_json(), now))
            conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))

    def messages(self, visitor: str, conversation_id: str) -> list[MessageRecord | Unreadable] | None:
        """The messages of the visitor's conversation in order (an Unreadable for a body that does not
        validate); None when the visitor has no such conversation."""
        with self._connect() as conn:
            if not conn.execute("SELECT 1 FROM conversations WHERE id = ? AND visitor = ?",
                                (conversation_id, visitor)).fetchone():
                return None
            rows = conn.execute("SELECT id, role, body FROM messages WHERE conversation_id = ? ORDER BY seq",
                                (conversation_id,)).fetchall()
        out: list[MessageRecord | Unreadable] = []
        for mid, role, body in rows:
            try:
                out.append(parse_record(body))
            except ValueError as exc:
                out.append(Unreadable(mid, role, str(exc)))
        return out

    # ---- feedback ----------------------------------------------------------------------------------

    def set_feedback(self, visitor: str, record: FeedbackRecord) -> None:
        """Store (or replace) the visitor's rating of one of their answers.

        :raises RagError: the message is not an answer in one of the visitor's conversations.
        """
        with self._connect() as conn:
            row = conn.execute("SELECT m.conversation_id FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                               "WHERE m.id = ? AND m.role = 'assistant' AND c.visitor = ?",
                               (record.message_id, visitor)).fetchone()
            if row is None or row[0] != record.conversation_id:
                raise RagError("this answer is not in your conversations any more; the feedback was not saved")
            conn.execute(
                "INSERT INTO feedback (message_id, rating, note, expected, question, answer, evidence, abstained, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET "
                "rating = excluded.rating, note = excluded.note, expected = excluded.expected, "
                "question = excluded.question, answer = excluded.answer, evidence = excluded.evidence, "
                "abstained = excluded.abstained, updated = excluded.updated",
                (record.message_id, record.rating, record.note, record.expected, record.question, record.answer,
                 json.dumps(record.evidence, ensure_ascii=False), int(record.abstained), utc_now()))

    def clear_feedback(self, visitor: str, message_id: str) -> None:
        """Remove the visitor's rating of one of their answers (none: nothing to do)."""
        with self._connect() as conn:
            conn.execute("DELETE FROM feedback WHERE message_id IN (SELECT m.id FROM messages m JOIN conversations c "
                         "ON c.id = m.conversation_id WHERE m.id = ? AND c.visitor = ?)", (message_id, visitor))

    def feedback(self, visitor: str | None, conversation_id: str | None = None) -> list[FeedbackRecord]:
        """Ratings in the order they were given: the visitor's (None: every visitor's, for the operator),
        optionally of one conversation only.

        :raises RagError: a stored row that does not validate (named by its message id).
        """
        sql = ("SELECT f.message_id, m.conversation_id, f.rating, f.note, f.expected, f.question, f.answer, "
               "f.evidence, f.abstained, f.updated FROM feedback f JOIN messages m ON m.id = f.message_id "
               "JOIN conversations c ON c.id = m.conversation_id WHERE 1 = 1")
        args: list[str] = []
        if visitor is not None:
            sql, args = sql + " AND c.visitor = ?", args + [visitor]
        if conversation_id is not None:
            sql, args = sql + " AND m.conversation_id = ?", args + [conversation_id]
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY f.updated, f.rowid", args).fetchall()
        out = []
        for mid, cid, rating, note, expected, question, answer, evidence, abstained, updated in rows:
            try:
                out.append(FeedbackRecord(message_id=mid, conversation_id=cid, rating=rating, note=note,
                                          expected=expected, question=question, answer=answer,
                                          evidence=json.loads(evidence), abstained=bool(abstained), updated=updated))
            except ValueError as exc:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
                raise RagError(f"chat history {self.path}: the feedback on message {mid} cannot be read "
                               f"({str(exc).splitlines()[0]})") from None
        return out


def clean_title(title: str) -> str:
    """A title on one line, without control characters, at most MAX_TITLE_CHARS characters."""
    one_line = " ".join("".join(ch if ch.isprintable() else " " for ch in title).split())
    return one_line if len(one_line) <= MAX_TITLE_CHARS else one_line[: MAX_TITLE_CHARS - 1].rstrip() + "…"
