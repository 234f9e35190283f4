"""The HTTP API (FastAPI): `create_app(config)` in app.py, one router per resource in routers/."""
