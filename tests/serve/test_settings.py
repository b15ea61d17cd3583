"""ServeSettings: defaults, environment, YAML, and the validators' what/why/fix messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from guardcal.errors import ConfigError
from guardcal.serve.settings import ServeSettings, is_loopback, parse_api_keys

KEY_A = "a" * 20
KEY_B = "b" * 20


def test_defaults_are_local_and_fail_closed(tmp_path):
    s = ServeSettings(bundle=None, escalate_below=0.9)
    assert (s.host, s.port, s.model, s.backend, s.mode, s.fail_action) == (
        "127.0.0.1",
        8000,
        "default",
        "transformers",
        "enforce",
        "escalate",
    )
    assert (s.max_request_batch, s.forward_batch, s.max_input_chars) == (32, 32, 20_000)
    assert (s.insecure, s.dev, s.redact_input) == (False, False, False)
    assert s.outbox == tmp_path / "home" / "serve" / "outbox.sqlite3"  # under $GUARDCAL_HOME
    assert s.key_scopes() == {}


def test_environment_is_read_with_the_prefix(monkeypatch):
    monkeypatch.setenv("GUARDCAL_PORT", "9001")
    monkeypatch.setenv("GUARDCAL_MODE", "shadow")
    monkeypatch.setenv("GUARDCAL_API_KEYS", f"{KEY_A}:classify,{KEY_B}:internal")
    s = ServeSettings(bundle=None, escalate_below=0.9)
    assert (s.port, s.mode) == (9001, "shadow")
    assert s.key_scopes() == {KEY_A: "classify", KEY_B: "internal"}
    assert KEY_A not in repr(s)


def test_yaml_config_with_flags_and_env_winning(tmp_path, monkeypatch):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 7000\nmax_request_batch: 8\nmode: shadow\nbundle: none\nescalate_below: 0.9\n")
    monkeypatch.setenv("GUARDCAL_MAX_REQUEST_BATCH", "16")
    s = ServeSettings.load(cfg, mode="enforce", adapter=None)
    assert (s.port, s.max_request_batch, s.mode, s.bundle) == (7000, 16, "enforce", None)


def test_request_batch_and_forward_batch_are_two_settings(tmp_path, monkeypatch):
    """The HTTP limit (items per request) and the model's micro-batch are set apart, from any source;
    the forward batch reaches the transformers backend, the request limit the OpenAPI schema and 422."""
    from guardcal.cli import build_backend
    from guardcal.serve.app import document_limits

    monkeypatch.setenv("GUARDCAL_FORWARD_BATCH", "4")
    s = ServeSettings.load(None, max_request_batch=64, bundle=None, escalate_below=0.9)
    assert (s.max_request_batch, s.forward_batch) == (64, 4)
    assert build_backend(s).forward_batch == 4
    schema = {"components": {"schemas": {"ClassifyRequest": {"properties": {"inputs": {}}}}}}
    assert (
        document_limits(schema, s)["components"]["schemas"]["ClassifyRequest"]["properties"]["inputs"]["maxItems"]
        == 64
    )


@pytest.mark.parametrize("source", ["flag", "env", "yaml", "keyword"])
def test_old_max_batch_is_refused_naming_both_new_settings(source, tmp_path, monkeypatch, capsys):
    from guardcal.cli import main

    cfg = tmp_path / "serve.yaml"
    cfg.write_text("max_batch: 8\n" if source == "yaml" else "port: 7000\n")
    if source == "env":
        monkeypatch.setenv("GUARDCAL_MAX_BATCH", "8")
    if source == "flag":
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--max-batch", "8"])
        assert exc.value.code == 2
        message = capsys.readouterr().err
    else:
        with pytest.raises(ConfigError) as err:
            old = {"max_batch": 8} if source == "keyword" else {}
            ServeSettings.load(cfg, bundle=None, escalate_below=0.9, **old)
        message = str(err.value)
    for name in ("max_request_batch", "--max-request-batch", "GUARDCAL_MAX_REQUEST_BATCH", "forward_batch",
                 "--forward-batch", "GUARDCAL_FORWARD_BATCH"):  # fmt: skip
        assert name in message, (name, message)


def test_serve_help_lists_allowed_values_and_defaults(capsys):
    """A newcomer reads the choices and defaults of --backend, --mode, --fail-action from --help alone."""
    from guardcal.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("--backend {transformers,vllm}", "--mode {enforce,shadow}", "--fail-action {escalate,block}",
                     "(default: transformers)", "(default: enforce)", "(default: escalate)", "(default: 127.0.0.1)",
                     "(default: 32)"):  # fmt: skip
        assert fragment in text, fragment
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--fail-action", "allow"])
    assert exc.value.code == 2 and "invalid choice: 'allow'" in capsys.readouterr().err


def test_yaml_unknown_key_is_a_config_error(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("prot: 7000\n")
    with pytest.raises(ConfigError, match="prot: Extra inputs are not permitted"):
        ServeSettings.load(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        ServeSettings.load(tmp_path / "missing.yaml")


def test_public_host_without_keys_is_refused():
    with pytest.raises(ValidationError, match="reachable from other machines.*GUARDCAL_API_KEYS"):
        ServeSettings(host="0.0.0.0", bundle=None, escalate_below=0.9)
    assert ServeSettings(host="0.0.0.0", bundle=None, escalate_below=0.9, insecure=True).insecure
    assert (
        ServeSettings(host="0.0.0.0", bundle=None, escalate_below=0.9, api_keys=f"{KEY_A}:classify").host == "0.0.0.0"
    )
    assert ServeSettings(host="::1", bundle=None, escalate_below=0.9).host == "::1"


@pytest.mark.parametrize("value", [0.3, 0.49, 1.01, -1.0])
def test_escalate_below_range(value):
    with pytest.raises(ValidationError, match=r"outside \[0.5, 1\].*never below 0.5"):
        ServeSettings(escalate_below=value, bundle=None)


@pytest.mark.parametrize("value", [0.5, 0.9, 1.0])
def test_escalate_below_accepts_the_range(value):
    assert ServeSettings(escalate_below=value, bundle=None).escalate_below == value


@pytest.mark.parametrize("value", ["allow", "ALLOW"])
def test_fail_action_allow_is_refused_with_the_reason(value):
    with pytest.raises(ValidationError, match="fail open"):
        ServeSettings(fail_action=value, bundle=None, escalate_below=0.9)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (f"{KEY_A}:admin", "only 'classify'"),
        (f"{KEY_A}", "not 'KEY:SCOPE'"),
        ("short:classify", "shorter than 16"),
        (f"{KEY_A}:classify,{KEY_A}:internal", "repeats"),
    ],
)
def test_api_key_errors_never_echo_the_key(keys, match):
    with pytest.raises(ConfigError, match=match) as info:
        ServeSettings.load(api_keys=keys, bundle="none", escalate_below=0.9)
    assert KEY_A not in str(info.value) and "short" not in str(info.value).replace("shorter", "")
    with pytest.raises(ValidationError) as raw:
        ServeSettings(api_keys=keys, bundle=None, escalate_below=0.9)
    assert KEY_A not in str(raw.value)


def test_api_keys_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"# ops keys\n{KEY_A}:internal\n\n{KEY_B}:classify  # the app\n")
    s = ServeSettings(api_keys_file=path, bundle=None, escalate_below=0.9, host="0.0.0.0")
    assert s.key_scopes() == {KEY_A: "internal", KEY_B: "classify"}
    with pytest.raises(ConfigError, match="repeats a key"):
        ServeSettings.load(api_keys_file=path, api_keys=f"{KEY_A}:internal", bundle="none", escalate_below=0.9)
    with pytest.raises(ConfigError, match="cannot read"):
        ServeSettings.load(api_keys_file=tmp_path / "nope.txt", bundle="none", escalate_below=0.9)


def test_bundle_must_exist(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        ServeSettings(bundle=str(tmp_path / "missing.json"))
    assert ServeSettings(bundle="none", escalate_below=0.9).bundle_path() is None


def test_other_validators():
    with pytest.raises(ValidationError, match="http:// or https://"):
        ServeSettings(webhook_url="ftp://x", bundle=None, escalate_below=0.9)
    with pytest.raises(ValidationError, match="hook_retry_max_s"):
        ServeSettings(hook_retry_base_s=10, hook_retry_max_s=1, bundle=None, escalate_below=0.9)
    with pytest.raises(ValidationError):
        ServeSettings(backend="onnx", bundle=None, escalate_below=0.9)
    with pytest.raises(ValidationError):
        ServeSettings(max_request_batch=0, bundle=None, escalate_below=0.9)
    with pytest.raises(ValidationError):
        ServeSettings(forward_batch=0, bundle=None, escalate_below=0.9)


def test_parse_api_keys_and_loopback():
    assert parse_api_keys(f" {KEY_A} : classify ,\n{KEY_B}:internal") == {KEY_A: "classify", KEY_B: "internal"}
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", None, "::"))
