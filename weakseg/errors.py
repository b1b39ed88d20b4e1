"""Errors raised for bad user input. Each message names the file (or value) and the fix."""

from __future__ import annotations


class WeaksegError(Exception):
    """Base class: an error the user can fix; the CLI prints it without a traceback."""


class DataError(WeaksegError):
    """A dataset file is missing, unreadable or inconsistent."""


class ConfigError(WeaksegError):
    """A configuration value or a name given to a registry is invalid."""


class MissingExtraError(WeaksegError):
    """An optional dependency is not installed."""


def unknown_name(kind: str, name: str, valid: object) -> ConfigError:
    """The error for an unknown registry name, listing the valid names."""
    names = ", ".join(sorted(valid))  # type: ignore[arg-type]
    return ConfigError(f"unknown {kind} {name!r}; valid names: {names}")


def missing_extra(package: str, extra: str, purpose: str) -> MissingExtraError:
    return MissingExtraError(
        f"{purpose} needs the optional package {package!r}, which is not installed. "
        f"Install it with: pip install 'weakseg[{extra}]'"
    )
