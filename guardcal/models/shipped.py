"""What the shipped calibration bundle was fitted for: adapter, prompt mode and reasoning budget.

A bundle is only valid for the exact setting it was fitted on. When the shipped bundle is used
with the default model and nothing else is said, the server and ``guardcal evaluate --bundle
default`` take that setting from here instead of making the user repeat it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from guardcal.assets import DEFAULT, DEFAULT_ADAPTER, DEFAULT_BUNDLE
from guardcal.errors import ModelError
from guardcal.models.loading import adapter_fingerprint

#: Reasoning budget assumed for a reasoning-mode bundle that does not record one.
DEFAULT_REASONING_BUDGET = 256


@dataclass(frozen=True)
class ShippedSetup:
    """The serving setting of the shipped bundle: adapter ('default' or None), mode, budget."""

    adapter: str | None
    reasoning: bool
    max_new_tokens: int


def shipped_setup() -> ShippedSetup | None:
    """The setting the shipped bundle was fitted for, or None when no bundle is shipped.

    Raises ModelError when the bundle names an adapter that is not the shipped one (a broken build).
    """
    if not DEFAULT_BUNDLE.is_file():
        return None
    data = json.loads(DEFAULT_BUNDLE.read_text(encoding="utf-8"))
    adapter_hash = data.get("adapter_hash")
    adapter = None
    if adapter_hash is not None:
        shipped = (DEFAULT_ADAPTER / "adapter_config.json").is_file()
        if not shipped or adapter_fingerprint(DEFAULT_ADAPTER) != adapter_hash:
            raise ModelError(
                f"the shipped bundle {DEFAULT_BUNDLE} was fitted for adapter {adapter_hash}, which is not the "
                "shipped default adapter; reinstall guardcal or pass --bundle and --adapter explicitly"
            )
        adapter = DEFAULT
    reasoning = data.get("mode") == "reasoning"
    budget = (data.get("extra") or {}).get("max_new_tokens") or DEFAULT_REASONING_BUDGET
    return ShippedSetup(adapter, reasoning, int(budget))
