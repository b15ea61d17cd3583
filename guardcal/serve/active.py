"""The policy a server decides with: calibration bundle, calibrator, thresholds and their version, as one value.

:class:`GuardService` holds one :class:`ActivePolicy` and each request takes it once, at its start, so a
bundle swapped in while the request runs (:meth:`GuardService.reload_bundle`: SIGHUP or
``POST /admin/reload-bundle``) never mixes into it: in-flight requests finish on the policy they began with.
A bundle is swapped in only when it fits the running backend, the check made at start-up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from guardcal.calibrate.base import Calibrator
from guardcal.calibrate.bundle import CalibrationBundle
from guardcal.calibrate.thresholds import Thresholds, fixed_thresholds, uncertified_warning
from guardcal.core.examples import LABELS
from guardcal.errors import CalibrationError
from guardcal.serve.errors import StartupError
from guardcal.serve.settings import ServeSettings


def digest(prefix: str, value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return prefix + hashlib.sha256(blob).hexdigest()[:12]


def resolve_thresholds(settings: ServeSettings, bundle: CalibrationBundle | None) -> Thresholds:
    """``escalate_below`` (1.0: escalate everything) > the bundle's thresholds; neither is refused."""
    if settings.escalate_below is not None:
        if settings.escalate_below >= 1.0:
            return Thresholds(1.0, 1.0, "fixed", {"escalate_below": 1.0}, LABELS)
        return fixed_thresholds(settings.escalate_below)
    if bundle is not None:
        return bundle.get_thresholds()
    raise StartupError(  # ServeSettings refuses this already; kept for settings built without validation
        "no calibration bundle and no escalate_below: pass --bundle FILE from guardcal calibrate, or "
        "--bundle none --escalate-below P"
    )


@dataclass(frozen=True)
class ActivePolicy:
    """What turns a raw reading into a decision, and the version responses and payloads name."""

    bundle: CalibrationBundle | None
    calibrator: Calibrator | None
    thresholds: Thresholds
    version: str

    @classmethod
    def build(cls, settings: ServeSettings, bundle: CalibrationBundle | None) -> ActivePolicy:
        thresholds = resolve_thresholds(settings, bundle)
        calibration = None if bundle is None else {"method": bundle.method, "params": bundle.params}
        policy = {"calibration": calibration, "thresholds": thresholds.to_dict()}
        version = digest("p-", {**policy, "mode": settings.mode, "fail": settings.fail_action})
        return cls(bundle, bundle.calibrator() if bundle is not None else None, thresholds, version)


def check_fits(bundle: CalibrationBundle, identity: dict[str, Any], settings: ServeSettings) -> None:
    """CalibrationError unless ``bundle`` was fitted for the running model, adapter, prompt, labels and mode
    (the start-up check) and, when it records one, in the dtype the server scores in."""
    bundle.check_compatible(**identity)
    fitted = bundle.extra.get("dtype")
    if fitted in ("float32", "bfloat16", "float16") and settings.dtype != fitted:
        raise CalibrationError(
            f"bundle was fitted on scores in {fitted} but the server scores in {settings.dtype}; restart the server "
            f"with --dtype {fitted} to use it"
        )


def uncertified(policy: ActivePolicy) -> str | None:
    """The start-up warning when the policy's thresholds certify nothing for a predicted label, with the share
    that escalates on the bundle's fit rows when it records it (``extra.fit_escalation``), else on its threshold
    rows, else naming the label only; None when every label can be auto-decided (or is escalated on purpose)."""
    bundle = policy.bundle
    from_bundle = bundle is not None and bundle.thresholds == policy.thresholds.to_dict()
    shares = bundle.extra.get("fit_escalation") if from_bundle and bundle is not None else None
    warning = uncertified_warning(policy.thresholds, shares if isinstance(shares, dict) else None)
    if warning is None:
        return None
    return f"{warning}; serve a bundle whose thresholds certify it, or set --escalate-below P for a fixed threshold"
