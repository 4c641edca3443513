"""``imgembed serve``: an HTTP API over an index (FastAPI + uvicorn, the optional ``serve`` extra)."""
