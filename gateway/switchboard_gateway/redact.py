"""The one place that scrubs credentials from text: log records, status messages, exceptions.

Two layers, because either alone leaks:
- exact values: every credential the gateway loads is registered (config.Secret does it) and
  replaced wherever it appears, whatever the surrounding text looks like;
- shapes: a Telegram token in a URL (``/bot<token>/``) or on its own, ``access_token`` fields,
  ``Authorization: QQBot ...`` headers and ``clientSecret`` values are scrubbed even when the
  value was never registered (e.g. a token a library echoes back from an earlier request).
"""

from __future__ import annotations

import logging
import re
import threading

REDACTED = "***"

_lock = threading.Lock()
_secrets: list[str] = []  # longest first, so a secret containing another one is replaced whole

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Bot API URLs: .../bot<token>/<method>; also file URLs .../file/bot<token>/...
    (re.compile(r"(/bot)[^/\s?#\"']*(?::|%3A)[^/\s?#\"']+", re.IGNORECASE), rf"\1{REDACTED}"),
    # A bare Telegram token: <bot id>:<35-ish url-safe chars>.
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{20,}"), REDACTED),
    # Authorization headers (QQ Bot, Bearer).
    (re.compile(r"\b((?:QQBot|Bearer)\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{REDACTED}"),
    # key/value forms in JSON, query strings, reprs: access_token, clientSecret, token, ...
    (re.compile(
        r"(?i)(?<![A-Za-z0-9_])([\"']?"
        r"(?:access_?token|client_?secret|app_?secret|secret|token|password)[\"']?"
        r"\s*[:=]\s*[\"']?)([^\"'\s,&}]+)"),
     rf"\1{REDACTED}"),
]


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from everything redacted from now on. Short values are ignored: replacing
    a 3-character secret everywhere would garble text without protecting much."""
    if not value or len(value) < 6:
        return
    with _lock:
        if value not in _secrets:
            _secrets.append(value)
            _secrets.sort(key=len, reverse=True)


def clear_secrets() -> None:
    """For tests."""
    with _lock:
        _secrets.clear()


def redact(text: object) -> str:
    """``str(text)`` with every registered secret and every credential shape replaced."""
    result = text if isinstance(text, str) else str(text)
    for secret in list(_secrets):
        if secret in result:
            result = result.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        result = pattern.sub(replacement, result)
    return result


# Text a platform sends (PTB makes the server's JSON "description" the exception message) is
# shown in status and logs: any server named in apiBaseURL could otherwise write pages of it, or
# forge log lines with control characters.
MAX_PLATFORM_TEXT = 512


def platform_text(text: object, limit: int = MAX_PLATFORM_TEXT) -> str:
    """Redacted, every control character (newlines included) turned into a space, and at most
    ``limit`` characters (cut with an ellipsis)."""
    clean = "".join(c if c.isprintable() else " " for c in redact(text))
    return clean if len(clean) <= limit else clean[:limit - 1] + "\u2026"


def describe(exc: BaseException) -> str:
    """A short, redacted, printable description of an exception, fit for status and logs."""
    return platform_text(str(exc) or type(exc).__name__)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (args merged), exception and stack text, redacted.

    Filters on a logger only see records created on that very logger, not the ones propagating
    from its children, so :func:`install` also puts this filter on every root handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_switchboard_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._switchboard_redacted = True
        return True


_FILTER = RedactingFilter()
NOISY_LOGGERS = ("httpx", "httpcore", "telegram", "telegram.ext", "aiohttp", "websockets",
                 "kubernetes", "urllib3")


def install(root: logging.Logger | None = None) -> RedactingFilter:
    """Install the filter on the root logger, its handlers and the libraries that log URLs."""
    root = root or logging.getLogger()
    for logger in (root, *(logging.getLogger(name) for name in NOISY_LOGGERS)):
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    # httpx logs every request URL (with the token) at INFO: keep it to warnings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return _FILTER
