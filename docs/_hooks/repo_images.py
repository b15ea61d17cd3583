"""mkdocs hook: the pages show the plots committed under results/ and benchmarks/results/ without copying them.

The pages link them as they sit in the repository (`../results/methods/methods.png`, relative to docs/, so the
links also work on a code host). Such a link leaves the docs folder, which `mkdocs build --strict` refuses; this
hook adds every image under those folders to the site under `repo/` (`repo/results/...`) and rewrites the
links to point there. Links to any other file outside docs/ still fail the strict build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("results", "benchmarks/results")
SUFFIXES = {".png", ".svg", ".jpg"}
_LINK = re.compile(r"\]\(\.\./((?:benchmarks/)?results/[^)\s]+)\)")


def on_files(files, config):  # noqa: ANN001, ANN201 - mkdocs hook signature
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file():
                files.append(File.generated(config, f"repo/{path.relative_to(ROOT)}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):  # noqa: ANN001, ANN201 - mkdocs hook signature
    depth = page.file.src_uri.count("/")
    return _LINK.sub(lambda m: "](" + "../" * depth + "repo/" + m.group(1) + ")", markdown)
