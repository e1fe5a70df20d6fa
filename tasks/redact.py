"""Keep secrets out of every store: MLflow, run folders, Airflow's XCom and logs, reports, errors.

One place decides what a secret is: the password of a URL (`scheme://user:password@host`),
and the value of any setting whose name says it is one (password, secret, token, ...).
`redact_setting` is applied to the whole configuration before it is logged or written
(`PipelineConfig.to_dict`); `redact_text` cleans free text (error messages, tags) of URL
credentials and of the secrets this process knows (`known_secrets`), including a password
that a malformed URL would split (an unencoded `@`).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# "token" as a word of the name (api_token, AIRFLOW_API_TOKEN), not a count of tokens (train.max_text_tokens).
_SECRET_NAME = re.compile(r"password|passwd|secret|(?<![a-z])token(?![a-z])|api_?key|credential", re.IGNORECASE)
# scheme://userinfo@ : userinfo runs to the LAST @ of the token, so a raw @ in a password is covered too.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^\s'\"<>]*)@")
# Environment variables whose values are secrets or URLs that may carry one.
SECRET_ENVIRONMENT = ("PRISMREC_DATABASE_URL", "MLFLOW_TRACKING_URI", "PRISMREC_READER_PASSWORD",
                      "PRISMREC_WRITER_PASSWORD", "PRISMREC_AIRFLOW_PASSWORD", "PRISMREC_AIRFLOW_API_TOKEN",
                      "PRISMREC_DATABASE__URL", "PRISMREC_REGISTRY__TRACKING_URI")


def is_secret_name(name: str) -> bool:
    """Whether a setting or variable name says its value is a secret (`database.password`, `api_token`)."""
    return bool(_SECRET_NAME.search(name))


def url_password(url: str) -> str | None:
    """The password written in a URL, as the user meant it (everything between the first `:` of the
    user info and the last `@`), or None. Works where a URL parser would split an unencoded `@`."""
    match = _URL_CREDENTIALS.search(url or "")
    if not match or ":" not in match.group("userinfo"):
        return None
    return match.group("userinfo").split(":", 1)[1] or None


def redact_url(url: str) -> str:
    """A URL with its password hidden: SQLAlchemy's rendering where it parses cleanly, else the generic pass."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return redact_text(url)
    if parsed.host and "@" in parsed.host:  # an unencoded @ in the password: the parser split it
        return redact_text(url)
    return parsed.render_as_string(hide_password=True)


def redact_setting(name: str, value: Any) -> Any:
    """A setting's value as it may be stored: secrets masked, URL passwords hidden, the rest unchanged."""
    if value is None or value == "":
        return value
    if is_secret_name(name):
        return MASK
    if isinstance(value, str) and "://" in value:
        return redact_url(value) if "@" in value else value
    return value


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: redact_setting(key, value) for key, value in settings.items()}


def known_secrets(environ: Mapping[str, str] | None = None, extra: Iterable[str | None] = ()) -> set[str]:
    """The secrets this process was given (passwords in the URLs of its environment, password
    variables), in the spellings they may appear in: as written, percent-decoded and encoded."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name in SECRET_ENVIRONMENT:
        value = environ.get(name) or ""
        found.add(url_password(value) or ("" if "://" in value else value))
    for value in extra:
        found.add(url_password(value or "") or "")
    spellings = set()
    for secret in filter(None, found):
        spellings |= {secret, urllib.parse.unquote(secret), urllib.parse.quote(secret, safe="")}
    return {s for s in spellings if len(s) >= 3}  # a one- or two-character "secret" would mask everything


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text without URL credentials or any of `secrets` (longest first)."""
    def mask(match: re.Match) -> str:
        user = match.group("userinfo").split(":", 1)[0] if ":" in match.group("userinfo") else match.group("userinfo")
        return f"{match.group('scheme')}{user}:{MASK}@" if ":" in match.group("userinfo") else match.group(0)

    cleaned = _URL_CREDENTIALS.sub(mask, text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        cleaned = cleaned.replace(secret, MASK)
    return cleaned
