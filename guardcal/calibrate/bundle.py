"""The calibration bundle: everything a server needs to apply a fitted calibration, as JSON.

A bundle pins the calibrator (``method`` + ``params``), the escalation ``thresholds`` and the
exact setting it was fitted for (model, adapter, prompt, label tokens, direct/reasoning mode).
A server calls :meth:`CalibrationBundle.check_compatible` before using it: a calibration fitted
for another model, adapter or prompt would silently mis-state every confidence. Files are plain
JSON (never pickle) and are validated on load.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guardcal import __version__
from guardcal.calibrate.base import Calibrator, calibrator_from_dict
from guardcal.calibrate.thresholds import Thresholds
from guardcal.core.labels import LabelSpec
from guardcal.errors import CalibrationError

MODES = ("direct", "reasoning")
_OPTIONAL = ("extra",)
_CHECKED = ("model_id", "adapter_hash", "prompt_fingerprint", "label_spec", "mode")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """JSON-normalise (tuples become lists) so equal contents compare equal."""
    return json.loads(json.dumps(value))


@dataclass
class CalibrationBundle:
    """A fitted calibration and the setting it belongs to.

    Parameters
    ----------
    method : str
        Calibration method (``"platt"``, ``"isotonic"`` or ``"temperature"``).
    params : dict
        The calibrator's ``to_dict()["params"]``.
    label_spec : dict
        ``LabelSpec.to_dict()`` of the decision tokens scored.
    prompt_fingerprint : str
        Fingerprint of the prompt template.
    mode : str
        ``"direct"`` or ``"reasoning"``.
    model_id : str
        Base model id or folder.
    adapter_hash : str or None
        Hash of the adapter weights, None without an adapter.
    thresholds : dict
        ``Thresholds.to_dict()``.
    metrics : dict
        ``{"before": {dataset: metrics}, "after": {dataset: metrics}}``.
    guardcal_version, created_at : str
        Writer's version and ISO-8601 UTC creation time (filled in by default).
    extra : dict
        Free-form JSON-safe notes (data split, seeds, ...).
    """

    method: str
    params: dict[str, Any]
    label_spec: dict[str, Any]
    prompt_fingerprint: str
    mode: str
    model_id: str
    adapter_hash: str | None
    thresholds: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=lambda: {"before": {}, "after": {}})
    guardcal_version: str = __version__
    created_at: str = field(default_factory=_utc_now)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CalibrationError(f"mode must be one of {MODES}, got {self.mode!r}")
        strings = ("method", "prompt_fingerprint", "model_id", "guardcal_version", "created_at")
        for name in strings:
            if not isinstance(getattr(self, name), str):
                raise CalibrationError(f"bundle field {name!r} must be a string, got {getattr(self, name)!r}")
        if self.adapter_hash is not None and not isinstance(self.adapter_hash, str):
            raise CalibrationError(f"bundle field 'adapter_hash' must be a string or null, got {self.adapter_hash!r}")
        for name in ("params", "label_spec", "thresholds", "metrics", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise CalibrationError(f"bundle field {name!r} must be a JSON object, got {getattr(self, name)!r}")

    @classmethod
    def from_fitted(
        cls,
        calibrator: Calibrator,
        thresholds: Thresholds,
        *,
        label_spec: LabelSpec | dict[str, Any],
        prompt_fingerprint: str,
        mode: str,
        model_id: str,
        adapter_hash: str | None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> CalibrationBundle:
        """Build a bundle from a fitted calibrator and thresholds (objects, not dicts)."""
        spec = label_spec.to_dict() if isinstance(label_spec, LabelSpec) else label_spec
        state = calibrator.to_dict()
        return cls(
            method=state["method"],
            params=state["params"],
            label_spec=_plain(spec),
            prompt_fingerprint=prompt_fingerprint,
            mode=mode,
            model_id=model_id,
            adapter_hash=adapter_hash,
            thresholds=thresholds.to_dict(),
            metrics=metrics if metrics is not None else {"before": {}, "after": {}},
            extra=extra if extra is not None else {},
        )

    def calibrator(self) -> Calibrator:
        """The fitted calibrator stored in the bundle (raises CalibrationError if params are bad)."""
        return calibrator_from_dict({"method": self.method, "params": self.params})

    def get_thresholds(self) -> Thresholds:
        """The stored thresholds as a :class:`Thresholds`."""
        return Thresholds.from_dict(self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a dict (the JSON document's top level)."""
        return asdict(self)

    def to_json(self) -> str:
        """Indented JSON text; raises CalibrationError if a value is not JSON-safe (e.g. NaN)."""
        try:
            return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"bundle is not JSON-safe ({exc}); use None for NaN, lists for arrays") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` atomically to ``path`` (parents created); return the path."""
        target = Path(path)
        text = self.to_json()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationBundle:
        """Read a bundle written by :meth:`save`; JSON only, fully validated.

        Raises
        ------
        CalibrationError
            Missing or unreadable file, not JSON, missing or unknown keys, bad calibrator
            params or thresholds; the message names the file (and the key).
        """
        source = Path(path)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CalibrationError(f"cannot read calibration bundle {source}: {exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(
                f"{source} is not a JSON calibration bundle ({exc}); pass a file written by guardcal calibrate"
            ) from None
        if not isinstance(data, dict):
            raise CalibrationError(f"{source}: a calibration bundle must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        for key in names:
            if key not in data and key not in _OPTIONAL:
                raise CalibrationError(
                    f"{source}: calibration bundle is missing key {key!r}; re-run guardcal calibrate to rewrite it"
                )
        if unknown := sorted(set(data) - set(names)):
            raise CalibrationError(f"{source}: unknown bundle key(s) {unknown}; was it written by a newer guardcal?")
        try:
            bundle = cls(**data)
            bundle.calibrator()
            bundle.get_thresholds()
        except CalibrationError as exc:
            raise CalibrationError(f"{source}: {exc}") from None
        return bundle

    def check_compatible(
        self,
        *,
        model_id: str,
        adapter_hash: str | None,
        prompt_fingerprint: str,
        label_spec: LabelSpec | dict[str, Any],
        mode: str,
        prompt_profile: dict[str, Any] | None = None,
    ) -> None:
        """Raise CalibrationError naming every field where the running setting differs from the bundle.

        Parameters
        ----------
        model_id, adapter_hash, prompt_fingerprint, label_spec, mode
            The running server's setting (``label_spec`` as a LabelSpec or its ``to_dict()``).
        prompt_profile
            The running prompt profile's ``describe()``: when the prompt fingerprints differ, the
            message names the profile fields that differ from the bundle's profile (recorded in
            ``extra.prompt_profile``; a bundle without it is compared with the built-in profile of
            the same fingerprint, e.g. the shipped bundle with ``default``).

        Raises
        ------
        CalibrationError
            One clause per differing field, with both values, then how to fix it.
        """
        spec = label_spec.to_dict() if isinstance(label_spec, LabelSpec) else label_spec
        running = {
            "model_id": model_id,
            "adapter_hash": adapter_hash,
            "prompt_fingerprint": prompt_fingerprint,
            "label_spec": _plain(spec),
            "mode": mode,
        }
        mine = {name: _plain(getattr(self, name)) for name in _CHECKED}
        clauses = [
            f"bundle was fitted for {name} {mine[name]!r} but the server runs {running[name]!r}"
            for name in _CHECKED
            if mine[name] != running[name]
        ]
        if mine["prompt_fingerprint"] != running["prompt_fingerprint"] and prompt_profile is not None:
            clauses.append(self._profile_clause(prompt_profile))
        if clauses:
            raise CalibrationError(
                "; ".join(clauses) + "; re-run guardcal calibrate for this model/adapter/prompt/mode (a new policy "
                "or prompt profile needs its own calibration before its confidence means anything)"
            )

    def fitted_profile(self) -> dict[str, Any] | None:
        """The prompt profile the bundle was fitted with (``extra.prompt_profile``), else the built-in profile
        whose fingerprint it carries (bundles written before profiles: the default), else None."""
        if isinstance(self.extra.get("prompt_profile"), dict):
            return dict(self.extra["prompt_profile"])
        from guardcal.core.profiles import builtin_names, load_profile
        from guardcal.core.prompt import PromptTemplate
        from guardcal.core.windows import WindowPolicy

        windows = WindowPolicy(self.extra.get("max_input_tokens") or 1024)
        surfaces = tuple(self.label_spec.get("surfaces", ()))
        for name in builtin_names():
            profile = load_profile(name)
            try:
                template = PromptTemplate(self.mode, profile=profile)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - a built-in without this mode is not the one
                continue
            if template.fingerprint(surfaces, windows) == self.prompt_fingerprint:
                return profile.describe()
        return None

    def _profile_clause(self, running: dict[str, Any]) -> str:
        from guardcal.core.profiles import differing_fields

        fitted = self.fitted_profile()
        if fitted is None:
            return f"the server runs prompt profile {running.get('name')!r}, and the bundle does not say which it had"
        diff = [d for d in differing_fields(fitted, running) if d != "name"]
        what = (
            f"prompt profile field(s) {', '.join(diff)} differ"
            if diff
            else "the prompt profiles are the same, so the label words, mode or window policy differ"
        )
        return f"{what} (bundle: profile {fitted.get('name')!r}, server: profile {running.get('name')!r})"
