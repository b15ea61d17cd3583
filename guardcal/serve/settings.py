"""Server settings: ``GUARDCAL_*`` environment variables, a YAML file, or keyword arguments.

Precedence, highest first: keyword arguments (CLI flags), environment, the YAML file given to
:meth:`ServeSettings.load`, defaults. Validators refuse unsafe set-ups (a non-loopback server
without API keys, a ``fail_action`` of ``allow``) with messages that say what is wrong, why it
matters and how to fix it.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from guardcal.assets import DEFAULT, DEFAULT_BUNDLE
from guardcal.core.windows import DEFAULT_MAX_TOKENS, DEFAULT_MAX_WINDOWS
from guardcal.errors import ConfigError, ModelError
from guardcal.models.default import DEFAULT_MODEL, guardcal_home
from guardcal.models.shipped import DEFAULT_REASONING_BUDGET, shipped_setup
from guardcal.serve.signing import parse_secret

Scope = Literal["classify", "internal", "metrics", "review"]
SCOPES: tuple[Scope, ...] = ("classify", "internal", "metrics", "review")
#: a key's name (``KEY:SCOPE@NAME``): who reviewed, for ``review`` keys (required there)
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: settings that hold secrets: never command-line flags (argv is visible to every user in ``ps``)
SECRET_FIELDS = ("api_keys", "webhook_secret")
MIN_KEY_CHARS = 16
#: the answer to the old ``max_batch`` setting (flag, environment or YAML), which meant two things
MAX_BATCH_SPLIT = (
    "max_batch (--max-batch, GUARDCAL_MAX_BATCH) was split in two: max_request_batch (--max-request-batch, "
    "GUARDCAL_MAX_REQUEST_BATCH), the most inputs in one request, and forward_batch (--forward-batch, "
    "GUARDCAL_FORWARD_BATCH), the most texts the model scores in one micro-batch; set the one you meant"
)
_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("guardcal_serve_config", default=None)


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_api_key_entries(text: str, source: str = "GUARDCAL_API_KEYS") -> dict[str, tuple[Scope, str | None]]:
    """Parse ``"key1:classify,key2:internal,key3:metrics,key4:review@alice"`` (commas or new lines; ``#``
    starts a comment) into ``{key: (scope, name)}``. A name (``@NAME``) is optional, except on ``review``
    keys: the reviewer a verdict is recorded under is the name of the key that sent it.

    Messages name the entry by position only: a key is never echoed.
    """
    keys: dict[str, tuple[Scope, str | None]] = {}
    entries = [e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
    for n, entry in enumerate((e for e in entries if e), start=1):
        key, sep, tail = entry.rpartition(":")
        scope, at, name = (part.strip() for part in tail.partition("@"))
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source} entry {n} is not 'KEY:SCOPE'; write e.g. 'k1...:classify,k2...:internal'")
        if scope not in SCOPES:
            raise ConfigError(
                f"{source} entry {n} has scope {scope!r}; only 'classify' (label and action), 'internal' "
                "(adds the calibrated confidence, /metrics and /admin), 'metrics' (/metrics only) and 'review' "
                "(the review queue and console) exist; fix the scope"
            )
        if at and not KEY_NAME.fullmatch(name):
            raise ConfigError(f"{source} entry {n} has a bad name after '@': use 1-64 letters, digits, '.', '_', '-'")
        if scope == "review" and not at:
            raise ConfigError(
                f"{source} entry {n} is a review key without a name: verdicts are recorded under the key's name, "
                "so write it as KEY:review@NAME (e.g. ...:review@alice)"
            )
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(
                f"{source} entry {n} has a key shorter than {MIN_KEY_CHARS} characters, which can be guessed; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if key in keys:
            raise ConfigError(f"{source} entry {n} repeats an earlier key; give each key one scope")
        keys[key] = (scope, name or None)
    return keys


def parse_api_keys(text: str, source: str = "GUARDCAL_API_KEYS") -> dict[str, Scope]:
    """``{key: scope}`` of ``"key1:classify,key2:internal,key3:metrics"`` (see :func:`parse_api_key_entries`)."""
    return {key: scope for key, (scope, _) in parse_api_key_entries(text, source).items()}


def _default_bundle() -> str | None:
    return DEFAULT if DEFAULT_BUNDLE.is_file() else None


def _fitted_dtype(bundle: Path) -> Any:
    """The dtype a bundle's fit set was scored in (``extra.dtype``), or None if it does not say."""
    try:
        fitted = (json.loads(bundle.read_text(encoding="utf-8")).get("extra") or {}).get("dtype")
    except (OSError, ValueError, AttributeError):
        return None  # the start-up load reports a broken bundle properly
    return fitted if fitted in ("float32", "bfloat16", "float16") else None


def _fitted_window(bundle: Path) -> int | None:
    """The window budget a bundle's fit set was scored with (``extra.max_input_tokens``), or None."""
    try:
        fitted = (json.loads(bundle.read_text(encoding="utf-8")).get("extra") or {}).get("max_input_tokens")
    except (OSError, ValueError, AttributeError):
        return None
    return fitted if isinstance(fitted, int) and not isinstance(fitted, bool) and fitted >= 1 else None


def _default_outbox() -> Path:
    return guardcal_home() / "serve" / "outbox.sqlite3"


class ServeSettings(BaseSettings):
    """Everything ``guardcal serve`` can be told; see each field's description."""

    model_config = SettingsConfigDict(
        env_prefix="GUARDCAL_", env_ignore_empty=True, extra="forbid", hide_input_in_errors=True
    )

    host: str = Field("127.0.0.1", description="interface to bind; non-loopback needs API keys or insecure")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    model: str = Field("default", description="base model: 'default', a folder or a Hugging Face id")
    adapter: str | None = Field(None, description="PEFT adapter folder (or 'default')")
    reasoning: bool = Field(False, description="prompt mode the backend runs: reasoning instead of direct")
    prompt: str = Field(
        "default",
        description="prompt profile: a built-in name (`guardcal prompts`) or a YAML file; the bundle must have been "
        "calibrated with the same profile (validated before the model loads)",
    )
    max_new_tokens: int = Field(
        DEFAULT_REASONING_BUDGET, ge=1, le=32_768, description="reasoning mode: most reasoning tokens before the label"
    )
    bundle: str | None = Field(
        default_factory=_default_bundle,
        description="calibration bundle: 'default' (shipped), a path, or 'none' (no calibration)",
    )
    backend: Literal["transformers", "vllm"] = Field("transformers", description="model backend")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="model dtype; auto: bfloat16 on CPUs with native bf16 (AVX512-BF16/AMX), else float32"
    )
    compile: bool = Field(
        False,
        description="transformers backend: torch.compile the forward (fused kernels; minutes of compiling before "
        "/readyz; not faster through HTTP on the 2-core CPU measured, see docs/performance.md; needs a C++ compiler)",
    )
    escalate_below: float | None = Field(
        None, description="fixed confidence threshold in [0.5, 1] overriding the bundle's; 1.0 escalates everything"
    )
    hooks: str | None = Field(
        None,
        description="comma list of escalation hooks to enable (default: log, and webhook if set); an installed "
        "plugin (entry point guardcal.hooks) is loaded only when named here",
    )
    webhook_url: str | None = Field(
        None, description="POST escalations here (https; http only to loopback or with allow_insecure_webhook)"
    )
    allow_insecure_webhook: bool = Field(
        False, description="allow a plain http:// webhook_url off loopback (escalations, inputs included, in clear)"
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret 'whsec_<base64 of 24-64 bytes>' (environment or YAML only, "
        "never a flag; or webhook_secret_file)",
    )
    webhook_secret_file: Path | None = Field(None, description="file holding the webhook signing key")
    webhook_timeout_s: float = Field(5.0, gt=0, description="timeout of one webhook POST")
    webhook_retries: int = Field(2, ge=0, le=10, description="in-call retries of a failed webhook POST")
    hook_retry_base_s: float = Field(1.0, gt=0, description="outbox back-off after the first failed delivery")
    hook_retry_max_s: float = Field(300.0, gt=0, description="longest outbox back-off between deliveries")
    hook_timeout_s: float = Field(
        30.0, gt=0, description="longest one delivery to one hook may take (a webhook's POSTs and in-call retries "
        "together); past it the delivery counts as failed and is retried, and the other hooks go on",
    )  # fmt: skip
    outbox: Path = Field(default_factory=_default_outbox, description="SQLite outbox file for escalations")
    outbox_retention_s: float = Field(
        86_400.0, ge=0, description="delivered escalations are deleted this long after delivery (pending ones never)"
    )
    outbox_max_bytes: int = Field(
        1 << 30, ge=1 << 20, description="cap on the outbox's data; an escalation past it gets the fail action"
    )
    api_keys: SecretStr | None = Field(
        None,
        description="'key:classify,key:internal,key:metrics,key:review@NAME' bearer keys (environment or YAML "
        "only, never a flag)",
    )
    api_keys_file: Path | None = Field(
        None,
        description="file of 'key:scope[@name]' entries (one a line or commas); scopes classify, internal, metrics, "
        "review (named: the reviewer)",
    )
    reviews: bool = Field(
        False,
        description="keep every escalation (and audit sample) for human review in review_db, and serve the review "
        "queue (GET /reviews/queue), verdicts (POST /reviews) and the console (/review) to review-scope keys",
    )
    review_db: Path | None = Field(
        None, description="SQLite file of review items and verdicts (default: reviews.sqlite3 beside the outbox)"
    )
    audit_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of confident (allow/block) decisions also sent to the hooks for review as reason "
        "'audit', each with this sampling probability; the caller's answer is unchanged",
    )
    insecure: bool = Field(False, description="allow a non-loopback host without API keys (trusted networks only)")
    mode: Literal["enforce", "shadow"] = Field("enforce", description="shadow: always answer allow, still escalate")
    fail_action: Literal["escalate", "block"] = Field(
        "escalate", description="action when the model gives no decision, fails or times out (never allow)"
    )
    max_input_chars: int = Field(20_000, ge=1, description="longer inputs are refused with 413")
    max_input_tokens: int = Field(
        DEFAULT_MAX_TOKENS,
        ge=1,
        le=1 << 20,
        description="tokens per scoring window: a longer input is scored whole, as overlapping windows of this "
        "many tokens, and decided on its highest calibrated P(unsafe); part of the prompt fingerprint, so it must "
        "be the value the bundle was fitted with (default: the bundle's recorded value, else 1024)",
    )
    max_windows: int = Field(
        DEFAULT_MAX_WINDOWS,
        ge=1,
        le=1024,
        description="most windows one input is scored as (each costs a forward of up to max_input_tokens tokens); "
        "an input needing more is refused with 413, never cut",
    )
    max_request_batch: int = Field(
        32, ge=1, le=1024, description="most inputs in one POST /classify request (more: 422)"
    )
    forward_batch: int = Field(
        32,
        ge=1,
        le=1024,
        description="transformers backend: most texts (windows count as texts) gathered into one micro-batch and "
        "scored together; its memory grows with this; unrelated to max_request_batch",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="one deadline per request: queue wait + scoring + the outbox write; fails closed past it",
    )
    queue_size: int = Field(64, ge=1, description="requests admitted at once (queued + scoring); more: 429")
    max_concurrency: int = Field(
        32, ge=1, description="requests scored by the backend at once (a micro-batch holds at most this many)"
    )
    limit_concurrency: int = Field(
        256, ge=2, description="uvicorn: most connections and requests at once; more get 503 before any parsing"
    )
    unready_after_failures: int = Field(
        5, ge=1, description="backend failures (errors, timeouts) in a row after which /readyz answers 503"
    )
    vllm_kv_cache_bytes: int = Field(
        1 << 30, ge=1 << 20, description="vllm backend: KV cache size in bytes (bounded; default 1 GiB)"
    )
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, description="vllm backend: GPUs one model is split across (tensor parallelism; 1 on CPUs)"
    )
    redact_input: bool = Field(
        False, description="hooks get a sha256 of the input instead of its text; no exception text in logs"
    )
    dev: bool = Field(False, description="development: serve /docs and /openapi.json")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may finish")
    keep_alive_s: int = Field(
        75, ge=1, description="idle keep-alive timeout; keep it above clients' and load balancers' so they close first"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=_CONFIG_FILE.get())
        return (init_settings, env_settings, yaml_source)

    @classmethod
    def load(cls, config: str | os.PathLike[str] | None = None, **overrides: Any) -> ServeSettings:
        """Settings from ``overrides`` > environment > the YAML file ``config`` > defaults.

        Raises ConfigError (one line per problem, without input values) instead of ValidationError.
        """
        path = Path(config) if config is not None else None
        if path is not None and not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass --config PATH to a YAML file")
        token = _CONFIG_FILE.set(path)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc)) from None
        finally:
            _CONFIG_FILE.reset(token)

    @model_validator(mode="before")
    @classmethod
    def _max_batch_was_split(cls, data: Any) -> Any:
        if (isinstance(data, dict) and "max_batch" in data) or os.environ.get("GUARDCAL_MAX_BATCH"):
            raise ValueError(MAX_BATCH_SPLIT)
        return data

    @field_validator("fail_action", mode="before")
    @classmethod
    def _never_allow(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "allow":
            raise ValueError(
                "fail_action 'allow' is refused: when the model gives no decision, errors or times out, allowing "
                "would let unchecked content through (fail open); use 'escalate' (default) or 'block'"
            )
        return value

    @field_validator("escalate_below")
    @classmethod
    def _threshold_range(cls, value: float | None) -> float | None:
        if value is not None and not 0.5 <= value <= 1.0:
            raise ValueError(
                f"escalate_below={value} is outside [0.5, 1]: it is compared with the calibrated confidence "
                "max(p, 1 - p), which is never below 0.5; use e.g. 0.9, or 1.0 to escalate every request"
            )
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must start with http:// or https://; fix the URL")
        return value

    @field_validator("adapter")
    @classmethod
    def _adapter_is_safetensors(cls, value: str | None) -> str | None:
        """Checked before any model loads: a PEFT folder with safetensors weights (pickle is refused)."""
        if value is not None:
            from guardcal.models.loading import check_adapter_dir

            try:
                check_adapter_dir(value)
            except ModelError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_profile(cls, value: str) -> str:
        """Loaded and validated here, before any model loads."""
        from guardcal.core.profiles import load_profile

        try:
            load_profile(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    def profile(self) -> Any:
        """The validated prompt profile (``core.profiles.PromptProfile``)."""
        from guardcal.core.profiles import load_profile

        return load_profile(self.prompt)

    @field_validator("bundle")
    @classmethod
    def _bundle_exists(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() == "none":
            return None
        if value == DEFAULT:
            if not DEFAULT_BUNDLE.is_file():
                raise ValueError(
                    "bundle 'default' was asked for but this build ships no default calibration bundle; "
                    "pass a bundle from guardcal calibrate, or 'none' to serve uncalibrated"
                )
            return value
        if not Path(value).is_file():
            raise ValueError(f"calibration bundle {value} does not exist; pass a file written by guardcal calibrate")
        return value

    @model_validator(mode="after")
    def _follow_the_bundle(self) -> ServeSettings:
        """Score the way the bundle was fitted: the shipped bundle's setting, then any bundle's dtype and
        window budget (``extra.dtype``, ``extra.max_input_tokens``) unless set explicitly."""
        self._take_shipped_setting()
        path = self.bundle_path()
        if "dtype" not in self.model_fields_set and path is not None:
            self.dtype = _fitted_dtype(path) or self.dtype
        if "max_input_tokens" not in self.model_fields_set and path is not None:
            self.max_input_tokens = _fitted_window(path) or self.max_input_tokens
        return self

    def _take_shipped_setting(self) -> None:
        """The shipped bundle brings the adapter, mode and reasoning budget it was fitted for.

        With the default model, settings left unset take the bundle's values. When the model, adapter
        or mode was set to something else, an implicit shipped bundle is dropped (the server then
        escalates on the fixed uncalibrated threshold and says so); a bundle named explicitly is kept
        and the start-up check refuses the mismatch, naming the field.
        """
        if self.bundle != DEFAULT:
            return
        try:
            setup = shipped_setup()
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        if setup is None:
            return
        explicit = self.model_fields_set
        if self.model == DEFAULT_MODEL:
            if "adapter" not in explicit:
                self.adapter = setup.adapter
            if "reasoning" not in explicit:
                self.reasoning = setup.reasoning
            if "max_new_tokens" not in explicit and setup.reasoning:
                self.max_new_tokens = setup.max_new_tokens
        from guardcal.core.profiles import content_sha, load_profile

        fits = self.model == DEFAULT_MODEL and self.adapter == setup.adapter and self.reasoning == setup.reasoning
        same_prompt = content_sha(load_profile(self.prompt)) == content_sha(load_profile("default"))
        if fits and not same_prompt and "bundle" not in explicit:
            raise ValueError(
                f"the shipped calibration bundle was fitted with the default prompt profile, but this server runs "
                f"prompt profile {self.prompt!r}: its confidences mean nothing under another policy. Calibrate for "
                "this profile (guardcal calibrate --prompt ... --output bundle.json) and pass --bundle bundle.json, "
                "or serve uncalibrated on purpose with --bundle none --escalate-below P"
            )
        if not fits and "bundle" not in explicit:
            mode = "reasoning" if self.reasoning else "direct"
            raise ValueError(
                f"the shipped calibration bundle was fitted for the default model, adapter {setup.adapter!r}, "
                f"{'reasoning' if setup.reasoning else 'direct'} mode, but this server runs model {self.model!r}, "
                f"adapter {self.adapter!r}, {mode} mode: its thresholds would not mean anything there. Fit a bundle "
                "for this setting (guardcal calibrate --model ... --adapter ... --output bundle.json) and pass "
                "--bundle bundle.json, or serve uncalibrated on purpose with --bundle none --escalate-below P"
            )

    @model_validator(mode="after")
    def _calibrated_or_explicit(self) -> ServeSettings:
        """Never auto-decide raw probabilities by default: without a bundle, escalate_below must be set."""
        if self.bundle is None and self.escalate_below is None:
            raise ValueError(
                "no calibration bundle (bundle 'none'): raw decision-token probabilities are usually overconfident, "
                "so the server will not auto-decide on them by default. Fit a bundle for this model with guardcal "
                "calibrate and pass --bundle FILE, or serve uncalibrated on purpose with --bundle none "
                "--escalate-below P (e.g. 0.99; 1.0 escalates every request)"
            )
        return self

    @model_validator(mode="after")
    def _compile_only_transformers(self) -> ServeSettings:
        if self.compile and self.backend != "transformers":
            raise ValueError("compile applies to the transformers backend (vLLM compiles its own graphs); drop it")
        return self

    @model_validator(mode="after")
    def _secure_binding(self) -> ServeSettings:
        keys = self.key_scopes()
        if not keys and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines but no API keys are set, so anyone could "
                "call the classifier; set GUARDCAL_API_KEYS or GUARDCAL_API_KEYS_FILE, bind 127.0.0.1, or set "
                "GUARDCAL_INSECURE=1 on a trusted network"
            )
        if self.hook_retry_max_s < self.hook_retry_base_s:
            raise ValueError("hook_retry_max_s is below hook_retry_base_s; raise hook_retry_max_s")
        if self.limit_concurrency <= self.queue_size:
            raise ValueError(
                f"limit_concurrency ({self.limit_concurrency}) must be above queue_size ({self.queue_size}), or "
                "uvicorn refuses requests (bare 503) before the queue answers 429; raise limit_concurrency"
            )
        return self

    @model_validator(mode="after")
    def _read_webhook_secret_file(self) -> ServeSettings:
        """``webhook_secret_file`` fills ``webhook_secret`` (one of the two, never both)."""
        path = self.webhook_secret_file
        if path is None:
            return self
        if self.webhook_secret is not None:
            raise ValueError("webhook_secret and webhook_secret_file are both set; keep one")
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read webhook_secret_file {path}: {exc.strerror}; fix the path") from None
        if not secret:
            raise ValueError(f"webhook_secret_file {path} is empty; write the signing key into it")
        self.webhook_secret = SecretStr(secret)
        return self

    @model_validator(mode="after")
    def _webhook_checks(self) -> ServeSettings:
        """A Standard Webhooks secret, no plain http off loopback, a hook timeout the webhook fits in."""
        if self.webhook_secret is not None:
            parse_secret(self.webhook_secret.get_secret_value())  # ValueError names the format, never the secret
        if self.webhook_url is None:
            return self
        parts = urlsplit(self.webhook_url)
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not self.allow_insecure_webhook:
            raise ValueError(
                f"webhook_url is plain http to {parts.hostname!r}: escalations (inputs included) and their "
                "signatures would cross the network in clear; use https://, or set GUARDCAL_ALLOW_INSECURE_WEBHOOK=1 "
                "(--allow-insecure-webhook) on a network you trust"
            )
        backoff = self.hook_retry_base_s * (2**self.webhook_retries - 1)
        worst = self.webhook_timeout_s * (self.webhook_retries + 1) + backoff
        if worst > self.hook_timeout_s:
            raise ValueError(
                f"a webhook delivery can take up to {worst:g} s (webhook_timeout_s x (webhook_retries + 1) plus "
                f"back-off) but hook_timeout_s is {self.hook_timeout_s:g}; raise hook_timeout_s or lower "
                "webhook_retries / webhook_timeout_s"
            )
        return self

    def key_scopes(self) -> dict[str, Scope]:
        """All configured API keys and their scopes (from ``api_keys`` and ``api_keys_file``)."""
        return {key: scope for key, (scope, _) in self.key_entries().items()}

    def key_entries(self) -> dict[str, tuple[Scope, str | None]]:
        """All configured API keys with their scope and name (``KEY:SCOPE@NAME``)."""
        keys: dict[str, tuple[Scope, str | None]] = {}
        if self.api_keys is not None:
            keys.update(parse_api_key_entries(self.api_keys.get_secret_value()))
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read api_keys_file {self.api_keys_file}: {exc.strerror}") from None
            for key, entry in parse_api_key_entries(text, source=str(self.api_keys_file)).items():
                if key in keys:
                    raise ConfigError(f"{self.api_keys_file} repeats a key from GUARDCAL_API_KEYS; keep one")
                keys[key] = entry
        return keys

    def review_path(self) -> Path:
        """The review store: ``review_db``, else ``reviews.sqlite3`` beside the outbox."""
        return self.review_db if self.review_db is not None else self.outbox.with_name("reviews.sqlite3")

    def bundle_path(self) -> Path | None:
        """The calibration bundle file, or None to serve without calibration."""
        if self.bundle is None:
            return None
        return DEFAULT_BUNDLE if self.bundle == DEFAULT else Path(self.bundle)


def describe_errors(exc: ValidationError) -> str:
    """One line per validation error, without the offending values (they may be secrets)."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "invalid serve settings: " + "; ".join(lines)
