"""The HTTP API and web page (`treeclip serve`): `treeclip.serve.app.create_app` builds the FastAPI app
around a `TreeOfLifeClassifier`; `treeclip.serve.limits` holds the request limits and the batching queue.
Needs the ``serve`` extra (fastapi, uvicorn, python-multipart)."""
