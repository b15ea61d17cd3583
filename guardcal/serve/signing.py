"""Webhook signatures in the Standard Webhooks convention (https://www.standardwebhooks.com).

Every webhook POST carries three headers:

- ``webhook-id``: the escalation's ``id``; the same on every retry, so it is the receiver's
  idempotency key (delivery is at-least-once);
- ``webhook-timestamp``: Unix seconds when this attempt was signed (receivers refuse old ones:
  a replay window);
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.

The secret is ``whsec_`` + base64 of 24-64 random bytes (the convention's format, which the
``standardwebhooks`` libraries in every language read); the HMAC key is the decoded bytes.
Signing is done by the ``standardwebhooks`` package itself.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
GENERATE_SECRET = (
    "python3 -c 'import base64, secrets; print(\"whsec_\" + base64.b64encode(secrets.token_bytes(32)).decode())'"
)


def new_secret(n_bytes: int = 32) -> str:
    """A fresh secret in the convention's format."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode()


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError (never quoting the secret) otherwise."""
    text = secret.strip()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(
            f"the webhook secret must be in the Standard Webhooks format 'whsec_<base64 of {MIN_SECRET_BYTES}-"
            f"{MAX_SECRET_BYTES} random bytes>' so any standardwebhooks library can verify it; generate one with: "
            f"{GENERATE_SECRET}"
        )
    body = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"the webhook secret after 'whsec_' is not base64; generate one with: {GENERATE_SECRET}"
        ) from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"the webhook secret decodes to {len(key)} bytes; the Standard Webhooks convention asks for "
            f"{MIN_SECRET_BYTES}-{MAX_SECRET_BYTES}; generate one with: {GENERATE_SECRET}"
        )
    return key


def signed_headers(msg_id: str, body: bytes, key: bytes, now: datetime | None = None) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for ``body`` (signed as is)."""
    when = now if now is not None else datetime.now(UTC)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(int(when.timestamp())),
        SIGNATURE_HEADER: Webhook(key).sign(msg_id, when, body),
    }
