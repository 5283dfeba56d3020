"""Configuration, errors, names, logging and host facts: imports nothing else of buildq."""
