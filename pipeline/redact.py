"""Remove credentials from anything that may reach a log line, an error record or the index.

Credentials enter a run in three ways, and each has its own rule:

* storage options (`{"key": ..., "secret": ..., "token": ...}` for s3fs / gcsfs): values under
  sensitive option names are masked, and every such value is also *registered* so that it is
  masked wherever it later shows up as text (a botocore message, a repr);
* the environment (`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...): those values are masked as
  text too, read at call time so credentials rotated during a run are covered;
* URLs: user info (`https://user:pass@host`) and signing query parameters
  (`X-Amz-Signature`, `X-Goog-Credential`, `sig`, `token`, ...) are masked.

Masking is textual and conservative: it replaces with `***`, never drops a field, so a redacted
message still says what went wrong. Very short values (< 4 chars) are not registered, since
masking them everywhere would garble unrelated text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Option / dict keys whose values are secrets. `key` alone is s3fs' access key id (not strictly
# secret, but it identifies the account, so it is masked too).
_SENSITIVE_NAME = re.compile(
    r"(secret|token|passw(or)?d|credential|signature|private[_-]?key|api[_-]?key|access[_-]?key|"
    r"session|auth|^key$)",
    re.IGNORECASE,
)
_SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "RAY_AUTH_TOKEN",
)
# scheme://user[:password]@host -> scheme://***@host
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# ?X-Amz-Signature=...&token=... (presigned URLs, SAS tokens)
_URL_SECRET_PARAM = re.compile(
    r"(?P<name>[?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|signature|sig|token|access_token|api_key|apikey|key|password)=)"
    r"(?P<value>[^&#\s\"']+)",
    re.IGNORECASE,
)
_MIN_SECRET_LEN = 4

_lock = threading.Lock()
_registered: set[str] = set()


def is_sensitive_name(name: str) -> bool:
    """True for option / field names whose value must never be shown."""
    return bool(_SENSITIVE_NAME.search(str(name)))


def _collect_secret_values(value: Any, under_sensitive: bool, out: set[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect_secret_values(v, under_sensitive or is_sensitive_name(str(k)), out)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _collect_secret_values(v, under_sensitive, out)
    elif under_sensitive and isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if len(text) >= _MIN_SECRET_LEN:
            out.add(text)


def register_secrets(options: Mapping[str, Any] | Iterable[str] | None) -> None:
    """Remember secret values so `redact` masks them in any text from now on.

    Accepts storage options (values under sensitive names are taken, nested dicts such as
    `client_kwargs` included) or a plain iterable of secret strings. `Storage` calls this for
    the options it is built with, so callers rarely need to.
    """
    if options is None:
        return
    found: set[str] = set()
    if isinstance(options, Mapping):
        _collect_secret_values(options, False, found)
    else:
        found = {s for s in options if isinstance(s, str) and len(s) >= _MIN_SECRET_LEN}
    with _lock:
        _registered.update(found)


def _known_secrets(extra: Iterable[str]) -> list[str]:
    values = {v for v in (os.environ.get(n) for n in _SECRET_ENV_VARS) if v and len(v) >= _MIN_SECRET_LEN}
    with _lock:
        values |= _registered
    values |= {s for s in extra if s and len(s) >= _MIN_SECRET_LEN}
    # Longest first, so a secret that contains another one is masked whole.
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """Mask URL credentials and every known secret value inside `text`."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _URL_SECRET_PARAM.sub(lambda m: f"{m.group('name')}{MASK}", text)
    for secret in _known_secrets(extra_secrets):
        text = text.replace(secret, MASK)
    return text


def redact(value: Any, extra_secrets: Iterable[str] = ()) -> Any:
    """Copy of `value` safe to log: strings via `redact_text`; in mappings, values under
    sensitive names (`secret`, `token`, `key`, `password`, ...) become `***`; lists/tuples
    recursively; other scalars unchanged.

    Meant for messages, URIs and option dicts. Do not pass whole index rows: their `key` column
    (the storage key of an asset) is not a secret but would be masked by name.
    """
    extra = list(extra_secrets)
    if isinstance(value, str):
        return redact_text(value, extra)
    if isinstance(value, Mapping):
        return {k: (MASK if is_sensitive_name(str(k)) and v not in (None, "") else redact(v, extra))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, extra) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v, extra) for v in value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}", extra)
    return value


class RedactingFilter(logging.Filter):
    """Logging filter that redacts each record's final message (and exception text).

    Install it on the handlers of driver and worker processes
    (`handler.addFilter(RedactingFilter())`) so a secret that slips into a log call, e.g.
    inside a botocore exception, is masked before it is written anywhere.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
