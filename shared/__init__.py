"""Code both buildq services use: settings, Redis keys and Lua, queue, jobs, storage."""

from __future__ import annotations

__version__ = "0.1.0"
