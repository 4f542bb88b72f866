"""User-facing errors: one class the CLI, UI and server turn into a one-line message (CLI exit code 1).

The README's "Errors and exit codes" table lists what raises each of them.
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


class NoDocuments(RagError):
    """A build found no document to index; the previous index, if any, is left as it was.

    :param message: the one-line message.
    :param skipped: the entries the walk skipped (rag.ingest.loaders.Skipped), for callers that list them.
    """

    def __init__(self, message: str, skipped: list[Any] | None = None):
        super().__init__(message)
        self.skipped = list(skipped or [])
