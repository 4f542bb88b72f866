"""User-facing errors: one class the CLI, UI and server turn into a one-line message (CLI exit code 1).

The table of docs/reference/errors.md ("Errors and exit codes") lists what raises each of them.
"""

from __future__ import annotations

from typing import Any


class RagError(Exception):
    """An error the user can act on; its message names the file or value and what to do."""


class IndexNotFound(RagError):
    """No index at the configured directory (run `rag index` first)."""


class IndexMismatch(RagError):
    """The stored index was built with settings that differ from the configured ones."""


class GeneratorError(RagError):
    """The language model backend failed (missing model, server down, bad answer)."""


class BadReply(GeneratorError):
    """A model's reply arrived but cannot be used: bytes that are not UTF-8, or more text than the byte cap.

    :param message: the one-line message (naming the server and what to do).
    :param reason: a short key for the kind, e.g. "reply_not_utf8", "reply_too_long" (`raft generate`
        records it as the rejection reason of the sample or chunk).
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class NoDocuments(RagError):
    """A build found no document to index; the previous index, if any, is left as it was.

    :param message: the one-line message.
    :param skipped: the entries the walk skipped (rag.ingest.loaders.Skipped), for callers that list them.
    """

    def __init__(self, message: str, skipped: list[Any] | None = None):
        super().__init__(message)
        self.skipped = list(skipped or [])


class UnreadableFile(Exception):
    """Raised by a reader when a file has no usable text; the message is the reason shown to the user.

    Not a RagError: a build skips that file with this reason and goes on (rag.ingest.loaders.read_file).
    """
