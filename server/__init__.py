"""The service: http/ (routes), services/ (what routes call), integrations/ (clients of what is outside),
and at the top the process: CLI, settings, wiring, errors, API shapes, logs and metrics."""
