"""Operator tooling: the buildq CLI, the API client, the stack supervisor, doctor, demo."""
