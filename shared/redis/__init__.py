"""Redis: every key name, the Lua scripts and the client factories."""
