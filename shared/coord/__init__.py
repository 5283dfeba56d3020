"""Team coordination: deploy locks, manual locks, staging claims, live-site promotion."""
