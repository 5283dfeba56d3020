"""Which environment variables a submitter may give a build (``build.env``).

The build's environment is applied only where the build shell is executed, inside
the sandbox (``deployer/_launch.py``); no buildq process ever runs with it. The
names refused here are a second line: variables that make the dynamic loader, libc
or an interpreter run code or read files of the submitter's choosing (``LD_PRELOAD``,
``GCONV_PATH``, ``PYTHONSTARTUP``, ``NODE_OPTIONS``, ``BASH_ENV``), and buildq's own
``BUILDQ_*`` names, which the deployer sets. ``PATH`` is allowed: it only changes
where the build's own shell looks up commands, inside the sandbox.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from shared.core.errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ENTRIES = 64
MAX_TOTAL_BYTES = 32 * 1024  # names and values, as NAME=VALUE\0
REFUSED_NAMES = frozenset(
    {
        "GCONV_PATH",
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "RES_OPTIONS",
        "NLSPATH",
        "GLIBC_TUNABLES",
        "NODE_OPTIONS",
        "BASH_ENV",
        "ENV",
        "IFS",
    }
)
REFUSED_PREFIXES = ("LD_", "MALLOC_", "PYTHON", "BUILDQ_")


def refusal(name: str) -> str | None:
    """Why ``name`` may not be set by a submitter, or None if it may."""
    upper = name.upper()  # the loader is case-sensitive; refusing look-alikes costs nothing
    if upper.startswith("BUILDQ_"):
        return f"{name} is reserved for buildq's own variables"
    if upper in REFUSED_NAMES or upper.startswith(REFUSED_PREFIXES):
        return f"{name} is a loader or interpreter variable and may not be set for a build"
    return None


def validate_build_env(mapping: Mapping[str, str], where: str) -> dict[str, str]:
    """``mapping`` as a plain dict if every entry may be given to a build, else
    ValidationError naming ``where`` (such as ``request`` or ``buildq.toml``)."""
    if len(mapping) > MAX_ENTRIES:
        raise ValidationError(f"{where}: build env has more than {MAX_ENTRIES} entries")
    env: dict[str, str] = {}
    total = 0
    for name, value in mapping.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValidationError(f"{where}: invalid environment variable name {name!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise ValidationError(f"{where}: environment value for {name} must be a string")
        why = refusal(name)
        if why is not None:
            raise ValidationError(f"{where}: {why}")
        total += len(name.encode()) + len(value.encode("utf-8", "surrogatepass")) + 2
        if total > MAX_TOTAL_BYTES:
            raise ValidationError(f"{where}: build env is larger than {MAX_TOTAL_BYTES} bytes")
        env[name] = value
    return env
