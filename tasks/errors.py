"""Error convention of s2agri.

Raise :class:`S2AgriInputError` for bad user input (a wrong argument, a missing file, data
that breaks the contract). The command line catches it, prints one line
``s2agri: error: <message>`` to stderr and exits with status 2. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations


class S2AgriInputError(ValueError):
    """Bad user input; the message says what is wrong and how to fix it, in one line."""


class S2AgriSourceError(S2AgriInputError):
    """A data source refused or failed: credentials, rate limit or server error after retries,
    a time-out, an empty search, a malformed response. One line, naming the source and the fix."""
