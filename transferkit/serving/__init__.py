"""``transferkit serve``: a bundle behind HTTP (:mod:`transferkit.serving.app`, FastAPI on uvicorn)."""
