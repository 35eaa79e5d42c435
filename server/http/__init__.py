"""The HTTP layer: the Litestar app, its route modules (one per resource), and the static web pages."""
