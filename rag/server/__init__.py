"""`rag serve`: an OpenAI-compatible Chat Completions server over the course documents.

`app` builds the FastAPI app, `schemas` and `responses` hold the pydantic request and response models,
`queue` the fair first-come-first-served access to the model.
"""

from rag.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
