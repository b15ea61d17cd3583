"""Which floating-point type a serving backend runs the model in.

``auto`` picks ``bfloat16`` on a CPU with native bf16 instructions (AVX512-BF16 or AMX-BF16),
where matrix multiplies run about twice as fast as in float32, and ``float32`` elsewhere (without
those instructions PyTorch emulates bf16, which is slower than float32). ``guardcal evaluate``
and calibration stay in float32 unless told otherwise; the bf16 scores agree with float32 to
the tolerance measured in ``tests/scoring/test_prefix_cache.py`` (see docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path

from guardcal.errors import ConfigError

SERVE_DTYPES = ("auto", "float32", "bfloat16", "float16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags Linux reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_supports_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU has native bf16 matrix instructions and PyTorch's oneDNN can use them."""
    found = cpu_flags() if flags is None else flags
    if not any(f in found for f in _BF16_FLAGS):
        return False
    import torch

    return bool(torch.backends.mkldnn.is_available())


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """``auto`` → ``bfloat16`` where the device runs it natively, else ``float32``; others unchanged.

    ``device`` is where the model runs: ``cpu`` (:func:`cpu_supports_bf16`) or ``cuda``
    (``torch.cuda.is_bf16_supported()``).
    """
    if dtype not in SERVE_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {SERVE_DTYPES} (auto: bf16 where the CPU has it)")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_supports_bf16() else "float32"
