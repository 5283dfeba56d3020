"""The one base error of buildq and its families."""

from __future__ import annotations


class BuildqError(Exception):
    """Base class of every error buildq raises on purpose."""


class ConfigError(BuildqError):
    """A setting is missing, unknown or invalid."""


class ValidationError(BuildqError):
    """Input from outside (a URL, a name, a path, an archive) was refused."""


class TransientError(BuildqError):
    """An infrastructure fault (network, Redis, S3, a dead worker) worth retrying."""


class StorageError(TransientError):
    """S3 could not be reached or refused an operation."""
