"""Schemathesis hooks for Confab's CI run: what a real client does that a generator cannot.

- The Stripe webhook is signed the way Stripe signs it (HMAC-SHA256 of `t.body` with the
  webhook secret), whenever the generated case sends a `stripe-signature` header at all, so the
  run tests the body's validation rather than only the signature check. A case without the
  header still tests that it is required.
- `POST /api/auth/signout` ends the session it is called with: it gets a session of its own, so
  the rest of the run keeps the shared token.
- `GET /api/cron/reset-credits` is called with `CRON_SECRET`, its own credential.
"""

import hashlib
import hmac
import json
import os
import time
import uuid

import requests
import schemathesis

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


def _body_bytes(kwargs) -> bytes:
    """The exact bytes the request will carry, fixed in `data` so that they are what is signed."""
    if "json" in kwargs:
        raw = json.dumps(kwargs.pop("json"), separators=(",", ":")).encode()
        kwargs["data"] = raw
        headers = kwargs.setdefault("headers", {}) or {}
        headers.setdefault("Content-Type", "application/json")
        kwargs["headers"] = headers
        return raw
    data = kwargs.get("data")
    if data is None:
        return b""
    if isinstance(data, str):
        data = data.encode()
        kwargs["data"] = data
    return bytes(data)


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    headers = kwargs.get("headers") or {}
    if path == "/api/webhooks/stripe":
        names = [h for h in headers if h.lower() == "stripe-signature"]
        if names and WEBHOOK_SECRET:
            body = _body_bytes(kwargs)
            t = int(time.time())
            mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256)
            headers = kwargs.get("headers") or headers
            for name in names:
                headers[name] = f"t={t},v1={mac.hexdigest()}"
            kwargs["headers"] = headers
    elif path == "/api/auth/signout" and any(h.lower() == "authorization" for h in headers):
        for name in [h for h in headers if h.lower() == "authorization"]:
            headers[name] = f"Bearer {_fresh_token()}"
        kwargs["headers"] = headers
    elif path == "/api/cron/reset-credits" and CRON_SECRET:
        for name in [h for h in headers if h.lower() == "authorization"]:
            headers[name] = f"Bearer {CRON_SECRET}"
        kwargs["headers"] = headers


@schemathesis.hook("filter_body").apply_to(method="POST", path="/api/chat")
def last_message_is_the_users(context, body):
    """A rule JSON Schema cannot state: the last message of a chat request is the user's.

    Only cases meant to be valid are shaped; a body that breaks the schema anyway is kept.
    """
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("role") == "user"
    return True
