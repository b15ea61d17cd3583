"""Every command shown in README.md and docs/*.md is checked against the code it names.

Shell commands are read from fenced ``bash``/``sh``/``shell``/``console`` blocks (line continuations joined,
comments dropped, ``&&`` / ``;`` / ``|`` split into separate commands). Per program:

- ``guardcal …`` (and ``… -m guardcal.cli …``): parsed with the real parser, ``guardcal.cli.build_parser()``,
  without running; a ``train`` command's configuration is also validated (``build_config``: method, λ, batch
  divisibility, a ``--config`` file's fields) before any model would load. The cheap ones (``--help``,
  ``--version``, ``prompts``) are run for real, in a temporary folder.
- ``make X``: X is a target of the Makefile.
- ``python[3] FILE``, ``bash FILE``, ``./FILE``, ``scripts/…``; ``-f``/``--config_file`` arguments of ``docker``,
  ``kubectl`` and ``accelerate``: the file exists (relative to a preceding ``cd``).
- ``curl``: the URL's path is a route the server defines (a string literal in ``guardcal/serve``).
- anything else must be listed in ``UNCHECKED``, so a new kind of command cannot slip in unnoticed.

A block right after an ``<!-- gpu -->`` line needs a GPU: it is parsed and checked like the others, never run.
Separately, every repository path named anywhere in the pages (``scripts/…``, ``benchmarks/…``, ``guardcal/…``,
``deploy/…``, …) must exist, except the few in ``GENERATED``. What this does not guarantee: that the expensive
commands (train, evaluate, calibrate, serve, docker, kubectl) succeed as written; other tests run the code
behind them. docs/development.md says the same.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
GPU_MARK = "<!-- gpu -->"
#: programs shown in the docs whose commands are not checked beyond this list (nothing to resolve locally)
UNCHECKED = {"chmod", "export", "open", "kill", "source", "sudo", "cd", "docker", "kubectl", "accelerate"}
#: repository paths named in the pages that a command writes, so a checkout need not have them
GENERATED = {
    "deploy/secrets/api_keys.txt": "written by deploy/make-secrets.sh",
}
#: guardcal commands cheap enough to run for real (no model, no data)
CHEAP = re.compile(r"^(--help|--version|prompts( \S+)?|\S+ --help)$")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    argv: tuple[str, ...]
    cwd: str  # relative to the repository root, after a preceding `cd`
    gpu: bool

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.argv)}"


def _blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(first line number, body, needs a GPU) of each fenced shell block of a page."""
    text = page.read_text()
    out = []
    pattern = r"^(?P<ind>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=ind)```[ ]*$"
    for m in re.finditer(pattern, text, flags=re.M | re.S):
        if m["info"].strip() not in SHELL_BLOCKS:
            continue
        before = [line.strip() for line in text[: m.start()].splitlines() if line.strip()]
        gpu = bool(before) and before[-1] == GPU_MARK
        out.append((text.count("\n", 0, m.start()) + 2, m["body"], gpu))
    return out


def _split(line: str) -> list[list[str]]:
    """A shell line as its simple commands (split at && ; | ||), comments and redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    tokens = list(lexer)
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token in {"&&", ";", "|", "||", "&"}:
            commands.append([])
        elif token in {">", ">>", "<", "2>"}:
            skip = True  # the redirection target
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def doc_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        for first, body, gpu in _blocks(page):
            cwd, buffer, start = ".", "", 0
            for offset, raw in enumerate(body.replace("\\\n", " ").splitlines()):
                if not buffer:
                    line = raw.strip()
                    if not line or line.startswith(("#", "{", "[")):  # comments, shown output
                        continue
                    buffer, start = line, offset
                else:  # a quoted argument over several lines
                    buffer += "\n" + raw
                try:
                    simple_commands = _split(buffer)
                except ValueError:  # no closing quotation yet
                    continue
                buffer = ""
                for argv in simple_commands:
                    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # FOO=bar cmd
                        argv = argv[1:]
                    if argv[:1] == ["sudo"]:
                        argv = argv[1:]
                    if not argv:
                        continue
                    commands.append(Command(name, first + start, tuple(argv), cwd, gpu))
                    if argv[0] == "cd" and len(argv) == 2:
                        cwd = os.path.normpath(os.path.join(cwd, argv[1]))
            assert not buffer, f"{name}:{first + start}: unbalanced quotes in a shell block"
    return commands


COMMANDS = doc_commands()


def _guardcal_args(command: Command) -> list[str] | None:
    argv = list(command.argv)
    if argv[0] == "guardcal":
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["guardcal.cli"]:
        return [a for a in argv[argv.index("-m") + 2 :] if a != "..."]
    return None


def _exists(command: Command, path: str) -> bool:
    return (ROOT / command.cwd / path).exists()


def test_the_docs_show_commands() -> None:
    programs = {c.argv[0] for c in COMMANDS}
    assert {"guardcal", "make", "curl", "docker"} <= programs, programs
    assert sum(c.argv[0] == "guardcal" for c in COMMANDS) >= 20
    readme = [c.argv for c in COMMANDS if c.page == "README.md"]
    assert readme[:2] == [("make", "run"), ("make", "test")], "README must start with `make run` and `make test`"


@pytest.mark.parametrize("command", [c for c in COMMANDS if _guardcal_args(c) is not None], ids=str)
def test_guardcal_command_parses(command: Command) -> None:
    from guardcal.cli import build_parser

    args = _guardcal_args(command)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exc:
            if exc.code == 0 and CHEAP.match(" ".join(args)):  # --help / --version print and exit 0
                return
            pytest.fail(f"{command}: the parser refuses it: {stderr.getvalue().strip()}")
    if parsed.command == "train":
        from dataclasses import fields

        from guardcal.train.config import TrainConfig, build_config

        config = parsed.config
        if config is not None:
            assert (ROOT / command.cwd / config).is_file(), f"{command}: no {config}"
            config = str(ROOT / command.cwd / config)
        overrides = {f.name: getattr(parsed, f.name) for f in fields(TrainConfig)}
        if overrides["adapter"] and not (ROOT / command.cwd / overrides["adapter"]).exists():
            overrides["adapter"] = "default"  # an adapter an earlier command writes (runs/sft): the shipped one
        build_config(overrides, config)


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c.argv[0] == "guardcal" and CHEAP.match(" ".join(c.argv[1:]))], ids=str
)
def test_cheap_guardcal_command_runs(command: Command, tmp_path: Path) -> None:
    assert not command.gpu
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "guardcal.cli", *command.argv[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{command} printed nothing"


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, flags=re.M))


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[0] == "make"], ids=str)
def test_make_target_exists(command: Command) -> None:
    targets = [a for a in command.argv[1:] if not a.startswith("-") and "=" not in a]
    assert targets, f"{command}: no target"
    assert set(targets) <= _make_targets(), f"{command}: not a Makefile target: {set(targets) - _make_targets()}"


def _file_args(command: Command) -> list[str]:
    argv = command.argv
    files = []
    program = argv[0]
    if program in {"python", "python3", "bash", "sh"}:
        rest = [a for a in argv[1:] if not a.startswith("-")]
        if "-c" not in argv and "-m" not in argv and rest:
            files.append(rest[0])
    elif "/" in program:
        files.append(program)
    for flag in ("-f", "--file", "--config_file"):
        if flag in argv:
            files.append(argv[argv.index(flag) + 1])
    if program == "docker" and argv[1:2] == ("compose",):
        files.append("compose.yaml")
    return files


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if _guardcal_args(c) is None and c.argv[0] not in {"make", "curl"}], ids=str
)
def test_other_command_is_known_and_its_files_exist(command: Command) -> None:
    files = _file_args(command)
    program = command.argv[0]
    if program in {"python", "python3"} and "-c" in command.argv:
        return  # inline code: nothing to resolve
    assert files or program in UNCHECKED, (
        f"{command}: {program!r} is neither checked here nor listed in UNCHECKED (tests/test_doc_commands.py)"
    )
    for path in files:
        assert _exists(command, path), f"{command}: {path} does not exist (relative to {command.cwd})"


def _routes() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "guardcal" / "serve").glob("*.py"))


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[0] == "curl"], ids=str)
def test_curl_path_is_a_route(command: Command) -> None:
    urls = [a for a in command.argv[1:] if re.match(r"(https?://)?(127\.0\.0\.1|localhost)(:\d+)?/", a)]
    assert urls, f"{command}: no local URL"
    routes = _routes()
    for url in urls:
        path = "/" + url.split("/", 3 if url.startswith("http") else 1)[-1]
        assert f'"{path}"' in routes, f"{command}: {path} is not a route of guardcal/serve"


def _brace_expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m[1].split(",") for x in _brace_expand(path[: m.start()] + alt + path[m.end() :])]


def _named_paths() -> list[tuple[str, str]]:
    top = "benchmarks|scripts|docker|deploy|configs|tests|guardcal|results|constraints|docs"
    named = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(rf"(?<![\w./-])((?:{top})/[\w./@-]*)(\{{[\w,.-]+\}}|\*)?", text):
            path = m[1] + m[2] if m[1].endswith(".") and m[2] else m[1].rstrip(".")
            if "…" in path or "<" in path:
                continue
            named.extend((str(page.relative_to(ROOT)), p) for p in _brace_expand(path))
    return sorted(set(named))


def _in_repo(path: str) -> bool:
    return any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()


def test_every_repository_path_named_in_the_docs_exists() -> None:
    missing = [f"{page}: {path}" for page, path in _named_paths() if path not in GENERATED and not _in_repo(path)]
    assert not missing, "paths named in the docs that are not in the repository:\n" + "\n".join(missing)
    assert len(_named_paths()) > 100


def test_gpu_blocks_are_marked() -> None:
    """Commands that only make sense with GPUs sit in a block marked <!-- gpu -->, so they are never run."""
    needs_gpu = re.compile(
        r"-f docker/Dockerfile(?![.\w])|deploy/k8s/gpu|accelerate launch|configs/cal-grpo-paper\.yaml"
    )
    marked = [c for c in COMMANDS if needs_gpu.search(shlex.join(c.argv))]
    assert len(marked) >= 4
    for c in marked:
        assert c.gpu, f"{c}: needs GPUs; put it in a block after a {GPU_MARK} line"
