"""The errors the library raises on purpose, and the exit code the CLI gives each.

Every error a user can cause (bad options, unusable input, a model file that cannot be read)
is an :class:`UnlearnableError`; the CLI turns it into one line on stderr and its
:attr:`~UnlearnableError.exit_code` (in one place, ``unlearnable.cli.errors``). Anything
else that escapes is a bug.

Exit codes (the same for every command):

* 0: success; 1: some items failed (:class:`PartialFailure`, :class:`IntegrityError`);
* 2: usage error (:class:`UsageError` and its subclasses);
* 3: "flagged" (scan, audit: a finding, not an error; commands return it themselves);
* 130: interrupted (Ctrl-C).

The usage errors also derive from ``ValueError`` so that code written against the older
per-module errors (``ProtectUsageError``, ``VerifyInputError``, ...) keeps catching them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_FLAGGED = 3
EXIT_INTERRUPTED = 130


class UnlearnableError(Exception):
    """Base of every error raised on purpose; ``exit_code`` is the CLI's exit status for it."""

    exit_code: int = EXIT_FAILURES


class UsageError(UnlearnableError, ValueError):
    """The request cannot be carried out as asked: bad options or parameters (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(UsageError):
    """Input data cannot be used: a missing or empty folder, bad labels, an unreadable key."""


class ProtectUsageError(UsageError):
    """A protect run cannot be carried out as given (paths, options); nothing was written."""


class ModelFileError(InputError):
    """A model file cannot be loaded: unknown format, unknown builder, weights that do not fit
    the architecture, or a pickle without the explicit trust flag."""


class IntegrityError(UnlearnableError):
    """Data does not match what was recorded (a manifest's hashes, a cache's fingerprint)."""


class PartialFailure(UnlearnableError):
    """The work ran, but some items failed (they are listed in the result); exit 1."""


__all__ = [
    "EXIT_FAILURES",
    "EXIT_FLAGGED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "InputError",
    "IntegrityError",
    "ModelFileError",
    "PartialFailure",
    "ProtectUsageError",
    "UnlearnableError",
    "UsageError",
]
