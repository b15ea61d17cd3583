"""Secrets are not command-line flags (issue 20, item 11).

API keys and the webhook secret come from the environment or a file, never argv (which every user
of the machine can read with ``ps``). That they never reach a log line of a real server, and are
absent from its command line, is checked on the real-model server of test_worker_death_e2e.py.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from guardcal.cli import build_parser
from guardcal.errors import ConfigError
from guardcal.serve.settings import ServeSettings

KEY = "argv-key-0123456789abcdef"
#: a Standard Webhooks secret ("whsec_" + base64 of 32 bytes)
SECRET = "whsec_" + base64.b64encode(b"argv-webhook-secret-0123456789ab").decode()


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDCAL_")}
    env["HF_HUB_OFFLINE"] = "1"
    # --bundle names a missing file: a server that accepted the flag would stop there, not load a model
    cmd = [sys.executable, "-m", "guardcal.cli", "serve", "--bundle", "/nonexistent/bundle.json", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("flag", "value", "env"),
    [("--api-keys", f"{KEY}:classify", "GUARDCAL_API_KEYS"), ("--webhook-secret", SECRET, "GUARDCAL_WEBHOOK_SECRET")],
)
def test_a_secret_given_as_a_flag_is_refused_with_the_fix_and_not_echoed(flag, value, env):
    for argv in ([flag, value], [f"{flag}={value}"]):
        done = _serve(*argv)
        out = done.stdout + done.stderr
        assert done.returncode == 2, out
        assert f"{flag} is refused" in out and "visible to every user" in out, out
        assert env in out and f"{flag}-file" in out and f"{env}_FILE" in out, out
        assert value not in out and "Traceback" not in out


def test_help_offers_the_file_flags_and_not_the_secret_ones(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--api-keys-file" in text and "--webhook-secret-file" in text
    assert "--api-keys " not in text and "--webhook-secret " not in text
    args = parser.parse_args(["serve", "--api-keys-file", "/k", "--webhook-secret-file", "/s"])
    assert (args.api_keys_file, args.webhook_secret_file) == ("/k", "/s")


def test_the_webhook_secret_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("GUARDCAL_"):
            monkeypatch.delenv(name)
    path = tmp_path / "webhook_secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    settings = ServeSettings.load(bundle="none", escalate_below=0.9, webhook_secret_file=str(path))
    assert settings.webhook_secret is not None and settings.webhook_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    monkeypatch.setenv("GUARDCAL_WEBHOOK_SECRET_FILE", str(path))
    assert ServeSettings.load(bundle="none", escalate_below=0.9).webhook_secret.get_secret_value() == SECRET
    monkeypatch.delenv("GUARDCAL_WEBHOOK_SECRET_FILE")
    monkeypatch.setenv("GUARDCAL_WEBHOOK_SECRET", SECRET)
    assert ServeSettings.load(bundle="none", escalate_below=0.9).webhook_secret.get_secret_value() == SECRET
    with pytest.raises(ConfigError, match="both set; keep one") as both:
        ServeSettings.load(bundle="none", escalate_below=0.9, webhook_secret_file=str(path))
    assert SECRET not in str(both.value)
    monkeypatch.delenv("GUARDCAL_WEBHOOK_SECRET")
    with pytest.raises(ConfigError, match=r"cannot read webhook_secret_file .*missing"):
        ServeSettings.load(bundle="none", escalate_below=0.9, webhook_secret_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        ServeSettings.load(bundle="none", escalate_below=0.9, webhook_secret_file=str(tmp_path / "empty"))


def test_limit_concurrency_must_leave_room_for_the_queue():
    with pytest.raises(ConfigError, match=r"limit_concurrency \(64\) must be above queue_size \(64\)"):
        ServeSettings.load(bundle="none", escalate_below=0.9, limit_concurrency=64)
