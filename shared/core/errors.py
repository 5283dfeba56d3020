"""The one base error of buildq and its families.

Whether a failure is retried is a property of its class, decided where it is raised:
a :class:`TransientError` (the network, Redis, S3, the local disk, a busy host) is
retried with backoff; a :class:`PermanentError` (bad input or configuration, a
build that failed on its own) ends the job at once with its message.
"""

from __future__ import annotations

import errno


class BuildqError(Exception):
    """Base class of every error buildq raises on purpose."""


class PermanentError(BuildqError):
    """Retrying cannot help: the job fails at once, with this message."""


class ConfigError(PermanentError):
    """A setting is missing, unknown or invalid."""


class ValidationError(PermanentError):
    """Input from outside (a URL, a name, a path, an archive) was refused."""


class BuildError(PermanentError):
    """The build failed on its own: exit status, timeout, memory, its output."""


class TransientError(BuildqError):
    """An infrastructure fault (network, Redis, S3, a dead worker) worth retrying."""


class StorageError(TransientError):
    """S3 could not be reached or refused an operation."""


class DiskError(TransientError):
    """The local disk failed (full, read-only, an I/O error): another try, or another
    deployer, may succeed."""


class CapacityError(TransientError):
    """This host has no room for the work now (every build uid is in use, …)."""


# errno values that say "the local disk", not "the data".
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.ENOMEM, errno.EMFILE}
)


def is_disk_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError of the local disk (see :data:`DISK_ERRNOS`)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS
