"""Two guardcal servers from two source trees, taking turns on the same short inputs (drift cancels).

    python benchmarks/serve_lockstep.py OLD_TREE NEW_TREE

Back-to-back serve_bench runs drifted more than the gap they measured on a 2-core VM (the same
in-process scorer gave 6.42 then 4.94 req/s), so this runs both servers at once and alternates
bursts of the same inputs between them, switching which goes first each round; it prints, per
concurrency, each tree's req/s and new/old. Produced benchmarks/results/serve_lockstep-avx2.json's
`servers_interleaved` rows (old = 356c2a1 in a `git worktree`, new = the windowed code).
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import serve_bench as sb  # noqa: E402
from guardcal.models.loading import load_tokenizer  # noqa: E402


async def burst(base, items, c):
    it = iter(items)
    async with httpx.AsyncClient(timeout=600) as cl:

        async def w():
            for t in it:
                r = await cl.post(base + "/classify", json={"input": t})
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(w() for _ in range(c)))
        return time.perf_counter() - t0


def start_server(name, tree, port, tmp):
    """``guardcal serve`` from source tree ``tree`` on ``port``, its outbox and log in ``tmp``: (process, base URL)."""
    cmd = [
        sys.executable,
        "-m",
        "guardcal.cli",
        "serve",
        "--backend",
        "transformers",
        "--port",
        str(port),
        "--bundle",
        "none",
        "--escalate-below",
        "0.9",
        "--outbox",
        str(tmp / f"{name}.sqlite3"),
        *sb.SERVER_FLAGS,
    ]
    log = open(  # noqa: SIM115 - the server writes to it until the end
        tmp / f"{name}.log", "wb"
    )
    p = subprocess.Popen(cmd, cwd="/tmp", env={**os.environ, "PYTHONPATH": tree}, stdout=log, stderr=subprocess.STDOUT)
    return p, f"http://127.0.0.1:{port}"


def wait_ready(base):
    """Until ``base``/readyz answers 200, for at most about 600 tries a second apart."""
    for _ in range(600):
        try:
            if httpx.get(base + "/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(1)


def lockstep(servers, texts, c, per, rounds):
    """``rounds`` bursts of ``per`` inputs at concurrency ``c`` to both servers, the first to go alternating."""
    tot = {"old": 0.0, "new": 0.0}
    n = 0
    pos = c * 1000 % 300
    for r in range(rounds):
        items = texts[(pos + r * per) % 400 :][:per]
        for k in ("old", "new") if r % 2 == 0 else ("new", "old"):
            tot[k] += asyncio.run(burst(servers[k][1], items, c))
        n += per
    return {
        "c": c,
        "n": n,
        "old_rps": round(n / tot["old"], 2),
        "new_rps": round(n / tot["new"], 2),
        "new_over_old": round(tot["old"] / tot["new"], 3),
    }


def main() -> None:
    old_tree, new_tree = sys.argv[1], sys.argv[2]
    tok = load_tokenizer("default")
    texts = sb.load_inputs(900, fits=lambda t: len(tok.encode(t, add_special_tokens=False)) <= 1024)[400:]
    tmp = Path(tempfile.mkdtemp())
    servers = {}
    for i, (name, tree) in enumerate((("old", old_tree), ("new", new_tree))):
        servers[name] = start_server(name, tree, 41000 + i, tmp)
    for name, (_, base) in servers.items():
        wait_ready(base)
        print(name, "ready", flush=True)

    try:
        for k in servers:
            asyncio.run(burst(servers[k][1], texts[-20:], 4))  # warm-up
        for c, per, rounds in ((1, 8, 6), (4, 16, 6), (16, 32, 5)):
            print(json.dumps(lockstep(servers, texts, c, per, rounds)), flush=True)
    finally:
        for p, _ in servers.values():
            p.terminate()
        for p, _ in servers.values():
            p.wait()


if __name__ == "__main__":
    main()
