"""Schemathesis hooks for Confab's CI run: what a real client does that a generator cannot.

- The Stripe webhook is signed the way Stripe signs it (HMAC-SHA256 of `t.body` with the
  webhook secret), whenever the generated case sends a `stripe-signature` header at all, so the
  run tests the body's validation rather than only the signature check. A case without the
  header still tests that it is required.
- `POST /api/auth/signout` ends the session it is called with: it gets a session of its own, so
  the rest of the run keeps the shared token.
- `GET /api/cron/reset-credits` is called with `CRON_SECRET`, its own credential.
- Rules JSON Schema cannot state are kept by the cases meant to be valid: a chat request's last
  message is the user's, a date range ends after it starts, a profile image is an image, an
  uploaded document is a document (a PDF, or else plain text).
"""

import hashlib
import hmac
import json
import os
import time
import uuid

import requests
import schemathesis
from schemathesis.core.file_samples import FILE_SAMPLES

BASE = os.environ["CONFAB_ST_BASE"].rstrip("/")
WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
CRON_SECRET = os.environ.get("CRON_SECRET", "")


def _fresh_token() -> str:
    email = f"st-{uuid.uuid4().hex}@example.com"
    r = requests.post(
        f"{BASE}/api/auth/signup",
        json={"email": email, "password": "password123", "name": "Schemathesis"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()["token"]


def _header_names(case, name):
    return [h for h in (case.headers or {}) if h.lower() == name]


def _set_header(case, name, value):
    headers = dict(case.headers or {})
    for existing in _header_names(case, name.lower()):
        del headers[existing]
    headers[name] = value
    case.headers = headers


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    if path == "/api/webhooks/stripe":
        # Sign the exact bytes sent: the body is serialized here and passed as `data`.
        if _header_names(case, "stripe-signature") and WEBHOOK_SECRET and case.body is not None:
            try:
                raw = json.dumps(case.body, separators=(",", ":")).encode()
            except (TypeError, ValueError):
                return
            kwargs["data"] = raw
            t = int(time.time())
            mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + raw, hashlib.sha256)
            _set_header(case, "stripe-signature", f"t={t},v1={mac.hexdigest()}")
    elif path == "/api/auth/signout":
        # Case headers win over the run's `-H` headers.
        _set_header(case, "Authorization", f"Bearer {_fresh_token()}")
    elif path == "/api/cron/reset-credits" and CRON_SECRET:
        _set_header(case, "Authorization", f"Bearer {CRON_SECRET}")
    elif path == "/api/profile/image":
        _an_image_if_meant_valid(case, kwargs)
    elif path == "/api/upload":
        _a_document_if_meant_valid(case, kwargs)


@schemathesis.hook("filter_body").apply_to(method="POST", path="/api/chat")
def last_message_is_the_users(context, body):
    """A rule JSON Schema cannot state: the last message of a chat request is the user's.

    Only cases meant to be valid are shaped; a body that breaks the schema anyway is kept.
    """
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("role") == "user"
    return True


def _instant(value, end_of_day):
    """An ISO date (its start, or its end) or an RFC 3339 date-time, as the server reads it."""
    from datetime import datetime, time as clock, timezone

    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).date()
            return datetime.combine(day, clock.max if end_of_day else clock.min, timezone.utc)
        t = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        return t if t.tzinfo else None
    except (TypeError, ValueError):
        return None


@schemathesis.hook("filter_query").apply_to(path_regex="/messages")
def date_range_in_order(context, query):
    """A rule JSON Schema cannot state: `endDate` is not before `startDate`."""
    if not isinstance(query, dict):
        return True
    start, end = query.get("startDate"), query.get("endDate")
    if not (isinstance(start, str) and isinstance(end, str)):
        return True
    s, e = _instant(start, False), _instant(end, True)
    return s is None or e is None or s <= e


_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")
# A 1x1 PNG, schemathesis' own sample.
_PNG = FILE_SAMPLES["png"]


def _is_positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _an_image_if_meant_valid(case, kwargs):
    """A rule JSON Schema cannot state: the file's own bytes are a JPEG, PNG or GIF image. A
    case meant to be valid whose file is another format (schemathesis also sends WebP, PDF and
    ZIP samples) sends a PNG instead. It goes as the request's `files`, so the generated case,
    and what schemathesis knows of it, stay as they were."""
    body = case.body
    if not (_is_positive(case) and isinstance(body, dict) and set(body) == {"image"}):
        return
    data = getattr(body["image"], "data", body["image"])
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if isinstance(data, (bytes, bytearray)) and not bytes(data).startswith(_IMAGE_SIGNATURES):
        kwargs["files"] = {"image": ("image.png", _PNG, "image/png")}




def _a_document_if_meant_valid(case, kwargs):
    """A rule JSON Schema cannot state: the file's own bytes are a PDF, a Word document, HTML,
    Markdown or text. A case meant to be valid whose file is another format (schemathesis sends
    PNG, JPEG, WebP and ZIP samples) sends a small text file instead, as the image hook does."""
    body = case.body
    if not (_is_positive(case) and isinstance(body, dict) and set(body) == {"file"}):
        return
    data = getattr(body["file"], "data", body["file"])
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if isinstance(data, (bytes, bytearray)) and not bytes(data).startswith(b"%PDF"):
        kwargs["files"] = {"file": ("notes.txt", b"Schemathesis notes.\n", "text/plain")}
