"""An example escalation receiver for guardcal's webhook hook (standard library only).

    WEBHOOK_SECRET=... python receiver.py --host 0.0.0.0 --port 9000 --out /data/escalations.jsonl

guardcal (``GUARDCAL_WEBHOOK_URL=http://HOST:9000/escalations``, ``GUARDCAL_WEBHOOK_SECRET``)
POSTs each escalation as compact JSON with ``X-Guardcal-Signature: sha256=<hex HMAC-SHA256 of
the exact body>``. This receiver:

- refuses to start without a secret (16+ characters): an unsigned webhook can be forged;
- verifies the signature over the raw bytes with a constant-time comparison before parsing
  anything (401 otherwise), and caps the body at 1 MiB (413);
- deduplicates on the payload's ``id``: guardcal's outbox delivers at least once (retries,
  restarts), so a repeat is acknowledged with 200 and not stored twice;
- appends each new escalation to a JSON-lines file for review and logs one line without the
  input text or scores.

A real deployment would put escalations into a review queue or ticketing system instead of a
file, and keep the seen ids in that store (here they are kept in memory, bounded).
"""

# ruff: noqa: T201 (a command-line program)
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SIGNATURE_HEADER = "X-Guardcal-Signature"
MAX_BODY_BYTES = 1 << 20
MIN_SECRET_CHARS = 16
SEEN_IDS = 100_000


def expected_signature(body: bytes, secret: str) -> str:
    """What guardcal sends: ``sha256=`` + hex HMAC-SHA256 of the body under the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(body: bytes, header: str | None, secret: str) -> bool:
    return header is not None and hmac.compare_digest(header.strip(), expected_signature(body, secret))


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


def make_handler(secret: str, store: EscalationStore, path: str = "/escalations") -> type[BaseHTTPRequestHandler]:
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
            if not signature_ok(body, self.headers.get(SIGNATURE_HEADER), secret):
                self._reply(HTTPStatus.UNAUTHORIZED, {"error": f"missing or wrong {SIGNATURE_HEADER}"})
                return
            try:
                payload = json.loads(body)
                payload["id"]
            except (ValueError, KeyError, TypeError):
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "body is not an escalation (JSON with an id)"})
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


def make_server(host: str, port: int, secret: str, out: Path | None) -> ThreadingHTTPServer:
    if len(secret) < MIN_SECRET_CHARS:
        raise SystemExit(
            f"receiver: the webhook secret is missing or shorter than {MIN_SECRET_CHARS} characters; set "
            "WEBHOOK_SECRET to the value of guardcal's GUARDCAL_WEBHOOK_SECRET (generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return ThreadingHTTPServer((host, port), make_handler(secret, EscalationStore(out)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="example receiver for guardcal escalation webhooks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--out", type=Path, help="JSONL file of escalations (default: stdout)")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, os.environ.get("WEBHOOK_SECRET", ""), args.out)
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
