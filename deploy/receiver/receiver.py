"""An example escalation receiver for guardcal's webhook hook (standard library only).

    WEBHOOK_SECRET=whsec_... python receiver.py --host 0.0.0.0 --port 9000 --out /data/escalations.jsonl

guardcal (``GUARDCAL_WEBHOOK_URL=http://HOST:9000/escalations``, ``GUARDCAL_WEBHOOK_SECRET``)
POSTs each escalation as compact JSON signed in the Standard Webhooks convention
(https://www.standardwebhooks.com): ``webhook-id`` (the escalation id), ``webhook-timestamp``
(Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``
under the secret ``whsec_<base64 key>``. This receiver:

- refuses to start without a secret in that format (24-64 bytes): an unsigned webhook can be
  forged;
- verifies the signature over the raw bytes with a constant-time comparison before parsing
  anything (401 otherwise), and caps the body at 1 MiB (413);
- refuses a ``webhook-timestamp`` more than ``--tolerance-s`` (300 s) from its clock (401): a
  captured request cannot be replayed later;
- deduplicates on ``webhook-id`` (which must equal the payload's ``id``): guardcal delivers at
  least once (retries, restarts, a 2xx lost to a timeout; each attempt signed afresh), so a
  repeat is acknowledged with 200 and not stored twice;
- appends each new escalation to a JSON-lines file for review and logs one line without the
  input text or scores.

Any Standard Webhooks library verifies the same requests (``standardwebhooks.Webhook(secret)
.verify(body, headers)`` in Python). A real deployment would put escalations into a review
queue or ticketing system instead of a file, and keep the seen ids in that store (here they are
kept in memory, bounded, and reloaded from the file on start).
"""

# ruff: noqa: T201 (a command-line program)
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
MAX_BODY_BYTES = 1 << 20
TOLERANCE_S = 300
SEEN_IDS = 100_000
GENERATE = (
    "python3 -c 'import base64, secrets; print(\"whsec_\" + base64.b64encode(secrets.token_bytes(32)).decode())'"
)


def parse_secret(secret: str) -> bytes:
    """The HMAC key of ``whsec_<base64>``; SystemExit (without echoing the secret) otherwise."""
    text = secret.strip()
    key = b""
    if text.startswith(SECRET_PREFIX):
        body = text[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise SystemExit(
            f"receiver: WEBHOOK_SECRET is missing or not 'whsec_<base64 of {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} "
            "bytes>'; set it to the value of guardcal's GUARDCAL_WEBHOOK_SECRET (generate one with: "
            f"{GENERATE})"
        )
    return key


def expected_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    key: bytes, body: bytes, headers: Mapping[str, str], *, now: float | None = None, tolerance_s: float = TOLERANCE_S
) -> str | None:
    """Why the request is not authentic (a short reason), or None when it is."""
    msg_id, timestamp, signatures = (headers.get(h) for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (msg_id and timestamp and signatures):
        return f"missing {ID_HEADER}, {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}"
    try:
        sent = int(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not Unix seconds"
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return f"{TIMESTAMP_HEADER} is outside the {tolerance_s:g} s replay window"
    expected = expected_signature(key, msg_id, timestamp, body).encode()
    if not any(hmac.compare_digest(expected, s.encode()) for s in signatures.split(" ")):
        return f"no matching {SIGNATURE_HEADER}"
    return None


class EscalationStore:
    """Appends new escalations to a JSONL file (or stdout); remembers recent ids to drop repeats."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        if out is not None and out.is_file():  # survive a restart without re-storing repeats
            for line in out.read_text(encoding="utf-8").splitlines():
                try:
                    self._remember(str(json.loads(line)["id"]))
                except (ValueError, KeyError, TypeError):
                    continue

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)

    def add(self, payload: dict[str, Any]) -> bool:
        """Store ``payload``; False if its id was seen before."""
        key = str(payload["id"])
        with self._lock:
            if key in self._seen:
                return False
            line = json.dumps(payload, sort_keys=True, ensure_ascii=False) + "\n"
            if self.out is None:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                with self.out.open("a", encoding="utf-8") as f:
                    f.write(line)
            self._remember(key)
            return True


def make_handler(
    key: bytes,
    store: EscalationStore,
    path: str = "/escalations",
    tolerance_s: float = TOLERANCE_S,
    clock: Callable[[], float] = time.time,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "guardcal-example-receiver"

        def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                self._reply(HTTPStatus.OK, {"status": "ok"})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != path:
                self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
                return
            if length < 0 or length > MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                self.close_connection = True
                return
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            problem = verify(key, body, headers, now=clock(), tolerance_s=tolerance_s)
            if problem is not None:
                self._reply(HTTPStatus.UNAUTHORIZED, {"error": problem})
                return
            try:
                payload = json.loads(body)
                same_id = str(payload["id"]) == headers[ID_HEADER]
            except (ValueError, KeyError, TypeError):
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "body is not an escalation (JSON with an id)"})
                return
            if not same_id:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": f"the payload's id differs from {ID_HEADER}"})
                return
            if not store.add(payload):
                self._reply(HTTPStatus.OK, {"status": "duplicate", "id": payload["id"]})
                return
            self.log_message(
                "escalation id=%s request_id=%s label=%s reason=%s",
                payload.get("id"),
                payload.get("request_id"),
                payload.get("label"),
                payload.get("reason"),
            )
            self._reply(HTTPStatus.OK, {"status": "accepted", "id": payload["id"]})

    return Handler


def make_server(
    host: str, port: int, secret: str, out: Path | None, tolerance_s: float = TOLERANCE_S
) -> ThreadingHTTPServer:
    key = parse_secret(secret)
    return ThreadingHTTPServer((host, port), make_handler(key, EscalationStore(out), tolerance_s=tolerance_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="example receiver for guardcal escalation webhooks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--out", type=Path, help="JSONL file of escalations (default: stdout)")
    parser.add_argument(
        "--tolerance-s", type=float, default=TOLERANCE_S, help="replay window: most clock difference accepted"
    )
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, os.environ.get("WEBHOOK_SECRET", ""), args.out, args.tolerance_s)
    print(f"receiver: listening on {args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)

    def stop(signum: int, frame: object) -> None:  # PID 1 in a container gets SIGTERM
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
