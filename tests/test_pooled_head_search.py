"""benchmarks/pooled_head_search.py: its row weights balance what they say they balance, and a saved
head reads as the fitted pipeline does, through guardcal's loader."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import pooled_head_search as search
from guardcal.models.loading import has_lora, load_head


def test_row_weights_balance_the_cells() -> None:
    domain = np.array([1] * 10 + [0] * 30)
    y = np.array([1] * 3 + [0] * 7 + [1] * 20 + [0] * 10)
    for weighting, openai_share in (("domain", 0.5), ("oai2", 2 / 3)):
        w = search.row_weights(domain, y, weighting)
        assert w.mean() == pytest.approx(1.0)
        cells = {(d, c): w[(domain == d) & (y == c)].sum() for d in (0, 1) for c in (0, 1)}
        assert cells[(1, 0)] == pytest.approx(cells[(1, 1)]) and cells[(0, 0)] == pytest.approx(cells[(0, 1)])
        assert (cells[(1, 0)] + cells[(1, 1)]) / w.sum() == pytest.approx(openai_share)
    w = search.row_weights(domain, y, "class")
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum())


def test_a_saved_head_reads_as_the_fitted_pipeline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.integers(0, 2, 60)
    fitted = search.head(0.1).fit(x, y)
    readouts = (("base", "mean", 10), ("base", "last", 30))
    search.save_head(tmp_path, fitted, readouts, None, "test variant")
    assert not has_lora(tmp_path)
    head = load_head(tmp_path)
    assert head is not None and head.readouts == (("mean", 10), ("last", 30))
    assert head.logits(x) == pytest.approx(fitted.decision_function(x), abs=1e-4)
