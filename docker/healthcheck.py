"""Container HEALTHCHECK: exit 0 when guardcal's ``/readyz`` answers 200, 1 otherwise.

Reads ``GUARDCAL_PORT`` (default 8000) and ``GUARDCAL_HOST`` (a wildcard bind is probed on
loopback). Standard library only; ``/readyz`` needs no API key.
"""

# ruff: noqa: T201
import os
import sys
import urllib.error
import urllib.request

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def main() -> int:
    host = os.environ.get("GUARDCAL_HOST", "").strip()
    host = "127.0.0.1" if host in WILDCARDS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = f"http://{host}:{os.environ.get('GUARDCAL_PORT') or 8000}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 (fixed local URL)
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
