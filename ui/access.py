"""Who may do what in the chat app: which model servers a visitor may pick, who gets the API key, who is admin.

Kept apart from app.py so the rules are plain functions that tests call directly (and AppTest drives).

Why: a visitor could type any "Server URL" in the sidebar and the app sent
`Authorization: Bearer <the server's OPENAI_API_KEY>` there, and requested any address the visitor
chose; any visitor could also remove course files. Now:

- A visitor picks a server from a list set by whoever runs the app: the configured `model` (when it is
  a URL) plus `ui_backend_urls` (RAG_UI_BACKEND_URLS). There is no free-text URL.
- The configured key (the setting api_key: RAG_API_KEY / OPENAI_API_KEY) goes only to the configured `model` URL; any other
  listed server gets no key at all.
- Adding and removing documents (and building the index) needs `admin_secret` (RAG_ADMIN_SECRET); without
  one configured nobody can, and the controls are not drawn.
"""

from __future__ import annotations

import hmac

from rag.config import Settings
from rag.errors import RagError
from rag.generation.factory import resolve_model

NO_KEY = ""  # what the HTTP backend takes as "send no Authorization header"


def _norm(url: str) -> str:
    return url.strip().rstrip("/")


def is_url(spec: str | None) -> bool:
    """Whether a model spec names an OpenAI-compatible server (rag.generation.factory.resolve_model's "http")."""
    try:
        return bool(spec) and resolve_model(spec).kind == "http"
    except RagError:
        return False


def configured_url(settings: Settings) -> str | None:
    """The server URL the app was configured with (`model` when it is a URL), else None."""
    return _norm(settings.model) if is_url(settings.model) else None


def allowed_servers(settings: Settings) -> list[str]:
    """The servers a visitor may pick: the configured URL first, then RAG_UI_BACKEND_URLS, without repeats.

    :param settings: the app's own settings (from rag.toml / RAG_*), never the visitor's choices.
    :returns: normalised URLs (no trailing slash); empty when the app offers only its local model.
    """
    urls = [u for u in [configured_url(settings), *map(_norm, settings.ui_backend_urls)] if u]
    return list(dict.fromkeys(urls))


def server_key(url: str, settings: Settings) -> str:
    """The api_key argument for a backend at `url`: the configured key (settings.api_key) for the configured
    URL only, NO_KEY ("": no Authorization header) for every other allowed server.

    :raises RagError: `url` is not one of allowed_servers(settings).
    """
    url = _norm(url)
    if url not in allowed_servers(settings):
        raise RagError(f"{url} is not one of the model servers this app may use; whoever runs it can add it "
                       "to RAG_UI_BACKEND_URLS")
    return settings.api_key_value() if url == configured_url(settings) else NO_KEY


def admin_enabled(settings: Settings) -> bool:
    """Whether an admin secret is configured (without one, nobody may change the documents)."""
    return settings.admin_secret is not None and bool(settings.admin_secret.get_secret_value())


def is_admin(settings: Settings, given: str | None) -> bool:
    """Whether `given` is the configured admin secret (constant-time comparison)."""
    if not admin_enabled(settings) or not given:
        return False
    return hmac.compare_digest(given.encode(), settings.admin_secret.get_secret_value().encode())


def require_admin(settings: Settings, given: str | None) -> None:
    """Refuse a document or index change unless `given` is the admin secret.

    :raises RagError: no admin secret is configured, or `given` is not it.
    """
    if not admin_enabled(settings):
        raise RagError("changing the course documents is switched off: set RAG_ADMIN_SECRET to allow an admin to")
    if not is_admin(settings, given):
        raise RagError("only an admin can change the course documents: enter the admin secret in the sidebar")
