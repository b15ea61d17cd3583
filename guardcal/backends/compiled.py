"""``torch.compile`` for the transformers backend's forward (opt-in: ``guardcal serve --compile``).

RMSNorm, rotary embeddings, SiLU and the KV-cache concatenations run as separate memory-bound
kernels in eager mode; inductor fuses them into generated C++ loops. On the idle development
CPU they are ~15% of a 16-request forward (matmuls 61%, attention 21%;
benchmarks/results/forward_profile.json), more when other work shares the cores.
The cost is a compile at start-up (minutes on 2 cores for a 30-layer model; /readyz waits for
it) and a C++ compiler on the machine. Shapes are compiled dynamic, so new batch sizes and
lengths reuse the graph instead of recompiling under traffic.

Measured on the 2-core development CPU (docs/performance.md): 1.08-1.22x in process, but no
faster through the HTTP server (0.91x at 16 concurrent requests), after 191 s of compiling.
So it is opt-in and off by default; measure it on your own machine (serve_bench.py).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from guardcal.errors import BackendError


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU ($CXX, else g++ / c++ / clang++), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for path in map(shutil.which, names) if path), None)


def compile_forward(model: Any) -> None:
    """Replace ``model.forward`` with its compiled version (in place); BackendError if it cannot run."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cpu" and cxx_compiler() is None:
        raise BackendError(
            "--compile on a CPU needs a C++ compiler for torch.compile (inductor), and none was found "
            "(g++, c++, clang++ or $CXX); install one (apt-get install g++) or serve without --compile"
        )
    model.forward = torch.compile(model.forward, dynamic=True)
