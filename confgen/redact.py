"""Keeping BGP passwords out of what people and logs see.

Stage: a filter at the edges of the config dataplane: ``confgen render`` output, and any text that may
quote a rendered config (the validator's complaints in ``confgen.apply``).

Owns: the one pattern that finds a TCP-MD5 key in an ExaBGP config (``md5-password "<key>";``) and the
replacement shown instead (``REDACTED``).

Complicating factors:
- The renderer writes keys base64-encoded, so the text to hide is the encoded form; the plain password
  never appears in a config. Redaction works on what the file actually holds.
- A tool may quote a key out of its line (a validator echoing a token), so besides masking the lines we
  also replace every occurrence of the keys a config holds in any text derived from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "<redacted>"
_MD5_LINE = re.compile(r'(\bmd5-password\s+)"([^"\n]*)"')


def config_secrets(config: str) -> set[str]:
    """The MD5 keys, as written, in an ExaBGP config."""
    return {match.group(2) for match in _MD5_LINE.finditer(config) if match.group(2)}


def redact_config(config: str) -> str:
    """``config`` with every ``md5-password`` value replaced by ``REDACTED``."""
    return _MD5_LINE.sub(lambda m: f'{m.group(1)}"{REDACTED}"', config)


def redact_values(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced, longest first (one may contain another)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
