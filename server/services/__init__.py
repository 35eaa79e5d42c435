"""What routes call: the turn, sessions, analytics, capacity, lifecycle jobs and API-key auth."""
