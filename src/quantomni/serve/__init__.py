"""OpenAI-compatible image-generation server for quantomni engines.

Import the pieces from their modules (``quantomni.serve.app.create_app``,
``quantomni.serve.server.run_server``...); this package file stays free of imports so
that importing ``quantomni`` never pulls in FastAPI.
"""
