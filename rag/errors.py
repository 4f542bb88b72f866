"""User-facing errors: one class the CLI, UI and server turn into a one-line message."""


class RagError(Exception):
    """An error the user can act on; its message names the file or value and what to do."""


class IndexNotFound(RagError):
    """No index at the configured directory (run `rag index` first)."""


class IndexMismatch(RagError):
    """The stored index was built with settings that differ from the configured ones."""


class GeneratorError(RagError):
    """The language model backend failed (missing model, server down, bad answer)."""
