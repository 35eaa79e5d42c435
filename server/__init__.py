"""Litestar app, settings, services composing one turn, and the sixshop-agent CLI."""
