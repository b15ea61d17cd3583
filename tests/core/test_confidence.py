import math

import numpy as np
import pytest

from guardcal.core.confidence import Scores, from_label_logprobs, from_logits, from_top_logprobs
from guardcal.core.labels import LabelSpec

SPEC = LabelSpec(labels=("safe", "unsafe"), surfaces=("Safe", "Unsafe"), token_ids=((5, 6), (7, 8)))


def test_from_logits_hand_worked():
    # vocab of 10; logits 0 everywhere except Safe ids 5,6 = log 2 and Unsafe id 7 = log 4
    z = np.zeros((1, 10))
    z[0, 5] = z[0, 6] = math.log(2)
    z[0, 7] = math.log(4)
    s = from_logits(z, SPEC)
    total = 7 * 1 + 2 + 2 + 4  # exp of every logit
    assert s.p_safe[0] == pytest.approx(4 / total)
    assert s.p_unsafe[0] == pytest.approx(5 / total)  # ids 7 (4) and 8 (1)
    assert s.p_unsafe_norm[0] == pytest.approx(5 / 9)
    assert s.pred == ["unsafe"]
    assert s.confidence[0] == pytest.approx(5 / total)  # full-vocabulary probability
    assert s.logit[0] == pytest.approx(math.log(5 / 4))


def test_logits_and_logprobs_agree_and_are_shift_invariant():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 50)) * 3
    a = from_logits(z, SPEC)
    b = from_logits(z + 100.0, SPEC)
    lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    c = from_label_logprobs(lp[:, list(SPEC.all_ids)], SPEC)
    for other in (b, c):
        np.testing.assert_allclose(a.p_safe, other.p_safe, rtol=1e-9)
        np.testing.assert_allclose(a.p_unsafe, other.p_unsafe, rtol=1e-9)


def test_top_logprobs_missing_tokens_and_undecided():
    rows = [{5: math.log(0.5), 8: math.log(0.25), 99: math.log(0.2)}, {99: 0.0}]
    s = from_top_logprobs(rows, SPEC)
    assert s.p_safe.tolist() == pytest.approx([0.5, 0.0])
    assert s.p_unsafe.tolist() == pytest.approx([0.25, 0.0])
    assert s.decided.tolist() == [True, False]
    assert s.p_unsafe_norm.tolist() == pytest.approx([1 / 3, 0.5])
    assert s.pred == ["safe", "unsafe"]  # nothing readable: ties fail closed to unsafe
    assert np.isfinite(s.logit).all()


def test_swapping_labels_mirrors_probabilities():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(8, 20))
    swapped = LabelSpec(labels=SPEC.labels, surfaces=SPEC.surfaces, token_ids=(SPEC.token_ids[1], SPEC.token_ids[0]))
    a, b = from_logits(z, SPEC), from_logits(z, swapped)
    np.testing.assert_allclose(a.p_unsafe_norm, 1 - b.p_unsafe_norm)
    np.testing.assert_allclose(a.confidence, b.confidence)


def test_shape_errors_and_concat():
    with pytest.raises(ValueError, match="expected shape"):
        from_label_logprobs(np.zeros((2, 3)), SPEC)
    with pytest.raises(ValueError, match="vocab"):
        from_logits(np.zeros(10), SPEC)
    parts = [Scores(np.array([0.1]), np.array([0.2])), Scores(np.array([0.3]), np.array([0.4]))]
    merged = Scores.concat(parts)
    assert merged.p_safe.tolist() == [0.1, 0.3] and len(merged) == 2
    assert len(Scores.concat([])) == 0


def test_float32_rounding_never_reads_above_one():
    """A near-certain token's float32 log-prob can round a hair above 0; the metrics reject p > 1."""
    from guardcal.calibrate.metrics import compute_metrics

    lp = np.array([[1.2e-7, -40.0, -30.0, -35.0], [-0.7, -0.8, -3.0, -4.0]])  # row 0: Safe at "log p = +1e-7"
    s = from_label_logprobs(lp, SPEC)
    assert s.p_safe[0] == 1.0 and s.confidence[0] == 1.0
    assert np.all((s.p_safe <= 1.0) & (s.p_unsafe <= 1.0)) and np.all(s.confidence <= 1.0)
    assert s.p_safe[1] == pytest.approx(math.exp(-0.7) + math.exp(-0.8))  # valid readings are unchanged
    compute_metrics(np.array([0, 1]), s.pred_unsafe, s.p_unsafe_norm, s.confidence)  # no "outside [0, 1]"
