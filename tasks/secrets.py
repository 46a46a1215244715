"""Secrets in URIs: found and refused before they can reach a config dump, a log or a report.

Run folders keep the resolved config (``config.json``, ``region.json``), eo-learn writes the
arguments of every task into its execution report and logs, and failure lines go to
``failed.json``: a password inside a URI would land in all of them. s2agri therefore refuses URIs
that carry one (in the user part, ``user:secret@host``, or as a query parameter such as
``?password=``) and asks for the usual secret stores instead (``PGPASSWORD``/``~/.pgpass``,
``SH_CLIENT_SECRET``/sentinelhub-py profiles); :func:`redact_uri` masks them in messages.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Query parameters that carry a secret (libpq's, OAuth's and the common spellings).
SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "sslpassword",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "apikey",
        "api_key",
    }
)


def uri_secret(uri: str) -> str | None:
    """Where ``uri`` holds a secret (``"password in the user part"``, ``"query parameter 'password'"``),
    None when it holds none."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return None
    if password:
        return "password in the user part (user:password@)"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in SECRET_PARAMETERS and value:
            return f"query parameter '{name}'"
    return None


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user part and the values of secret query parameters as ``***``."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return uri
    netloc = parts.netloc
    if password:
        netloc = netloc.replace(f":{password}@", ":***@", 1)
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name.lower() in SECRET_PARAMETERS for name, _ in pairs):
        query = urlencode(
            [(name, "***" if name.lower() in SECRET_PARAMETERS else value) for name, value in pairs], safe="*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
