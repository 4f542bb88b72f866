"""`rag serve`: an OpenAI-compatible Chat Completions server over the course documents.

`app` builds the FastAPI app, `schemas` holds the pydantic request/response models, `queue` the fair
first-come-first-served access to the model.
"""

from rag.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
