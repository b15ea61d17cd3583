"""Tests for guardcal.calibrate.metrics: hand-worked values, independent references, properties."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest

from guardcal.calibrate import metrics
from guardcal.calibrate.metrics import (
    METRIC_NAMES,
    ReliabilityCurve,
    accuracy,
    auroc,
    brier,
    compute_metrics,
    ece,
    ece_equal_width,
    mce,
    nll,
    overconfident_ratio,
    paired_bootstrap,
    reliability_curve,
    sce,
)
from guardcal.errors import CalibrationError

# --------------------------------------------------------------------------------------------
# A six-example case worked by hand.
#
#   i   y  pred  p_unsafe  confidence  correct
#   0   1   1     0.9        0.9          1
#   1   0   1     0.2        0.8          0
#   2   1   0     0.4        0.6          0
#   3   0   0     0.1        0.9          1
#   4   1   1     0.7        0.7          1
#   5   0   1     0.6        0.6          0
# (the metrics do not require pred, p_unsafe and confidence to agree; i = 1 exercises that)
# accuracy = 3/6 = 0.5
#
# ECE, 3 equal-mass bins.  Stable sort by confidence: i = 2(.6) 5(.6) 4(.7) 1(.8) 0(.9) 3(.9)
#   bin {2,5}: conf .60, acc 0   -> gap .60
#   bin {4,1}: conf .75, acc .5  -> gap .25
#   bin {0,3}: conf .90, acc 1   -> gap .10
#   ECE = (.60 + .25 + .10) / 3 = .95/3 ;  MCE = .60
# ECE, default 15 bins -> six singleton bins: mean |correct - conf|
#   = (.1 + .8 + .6 + .1 + .3 + .6) / 6 = 2.5/6
# Equal-width ECE, 4 bins (edges 0, .25, .5, .75, 1):
#   [.5, .75): i = 2, 5, 4 -> conf 1.9/3, acc 1/3 -> gap .3, weight 1/2
#   [.75, 1]:  i = 1, 0, 3 -> conf 2.6/3, acc 2/3 -> gap .2, weight 1/2
#   ECE = .15 + .10 = .25
# SCE, 4 bins.
#   unsafe (p = p_unsafe, target y):
#     [0,.25): p .2 .1  y 0 0 -> |0 - .15|  = .15 x 2
#     [.25,.5): p .4    y 1   -> |1 - .4|   = .60 x 1
#     [.5,.75): p .7 .6 y 1 0 -> |.5 - .65| = .15 x 2
#     [.75,1]: p .9     y 1   -> |1 - .9|   = .10 x 1      sum = 1.3 / 6
#   safe (p = 1 - p_unsafe = .1 .8 .6 .9 .3 .4, target 1 - y = 0 1 0 1 0 1):
#     [0,.25): .1 (0)          -> .10 x 1
#     [.25,.5): .3 (0) .4 (1)  -> |.5 - .35| = .15 x 2
#     [.5,.75): .6 (0)         -> .60 x 1
#     [.75,1]: .8 (1) .9 (1)   -> |1 - .85| = .15 x 2        sum = 1.3 / 6
#   SCE = 1.3 / 6
# Brier = (.01 + .04 + .36 + .01 + .09 + .36) / 6 = .87 / 6 = .145
# NLL   = -(ln .9 + ln .8 + ln .4 + ln .9 + ln .7 + ln .4) / 6      (gold-label probabilities)
# AUROC(confidence vs correct): positives .9 .9 .7, negatives .8 .6 .6
#   .9 beats all 3 (x2) -> 6, .7 beats .6 .6 -> 2 ; 8/9
# AUROC(p_unsafe vs y): positives .9 .4 .7, negatives .2 .1 .6
#   .9 -> 3, .4 -> 2, .7 -> 3 ; 8/9
# --------------------------------------------------------------------------------------------
Y = np.array([1, 0, 1, 0, 1, 0])
PRED = np.array([1, 1, 0, 0, 1, 1])
P_UNSAFE = np.array([0.9, 0.2, 0.4, 0.1, 0.7, 0.6])
CONF = np.array([0.9, 0.8, 0.6, 0.9, 0.7, 0.6])
CORRECT = (Y == PRED).astype(int)


def test_hand_worked_example() -> None:
    assert CORRECT.tolist() == [1, 0, 0, 1, 1, 0]
    assert accuracy(Y, PRED) == pytest.approx(0.5)
    assert ece(CONF, CORRECT, n_bins=3) == pytest.approx(0.95 / 3)
    assert ece(CONF, CORRECT) == pytest.approx(2.5 / 6)
    assert mce(CONF, CORRECT, n_bins=3) == pytest.approx(0.6)
    assert ece_equal_width(CONF, CORRECT, n_bins=4) == pytest.approx(0.25)
    assert sce(P_UNSAFE, Y, n_bins=4) == pytest.approx(1.3 / 6)
    assert brier(P_UNSAFE, Y) == pytest.approx(0.145)
    gold = [0.9, 0.8, 0.4, 0.9, 0.7, 0.4]
    assert nll(P_UNSAFE, Y) == pytest.approx(-sum(math.log(g) for g in gold) / 6)
    assert auroc(CONF, CORRECT) == pytest.approx(8 / 9)
    assert auroc(P_UNSAFE, Y) == pytest.approx(8 / 9)
    assert overconfident_ratio(CONF) == 0.0
    assert overconfident_ratio(CONF, threshold=0.85) == pytest.approx(2 / 6)


def test_compute_metrics_hand_worked() -> None:
    m = compute_metrics(Y, PRED, P_UNSAFE, CONF)
    assert tuple(m) == METRIC_NAMES
    assert m["n"] == 6 and isinstance(m["n"], int)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["ece"] == pytest.approx(2.5 / 6)  # default 15 bins, six singletons
    assert m["mce"] == pytest.approx(0.8)
    assert m["brier"] == pytest.approx(0.145)
    assert m["auroc"] == pytest.approx(8 / 9)
    assert m["auroc_unsafe"] == pytest.approx(8 / 9)
    assert m["overconfident_ratio"] == 0.0
    assert all(isinstance(v, float) for k, v in m.items() if k != "n")
    json.dumps(m, allow_nan=False)


def test_compute_metrics_nan_becomes_none() -> None:
    # every prediction correct -> AUROC of confidence vs correctness is undefined
    m = compute_metrics([1, 0, 1], [1, 0, 1], [0.8, 0.3, 0.9], [0.8, 0.7, 0.9])
    assert m["auroc"] is None
    assert m["auroc_unsafe"] == pytest.approx(1.0)
    # only one gold class -> AUROC of p_unsafe is undefined too
    m = compute_metrics([1, 1], [1, 0], [0.8, 0.3], [0.8, 0.7])
    assert m["auroc_unsafe"] is None
    assert json.loads(json.dumps(m, allow_nan=False))["auroc_unsafe"] is None


def test_metric_names() -> None:
    assert METRIC_NAMES == (
        "n",
        "accuracy",
        "ece",
        "ece_equal_width",
        "sce",
        "mce",
        "brier",
        "nll",
        "auroc",
        "auroc_unsafe",
        "overconfident_ratio",
    )


def test_auroc_ties_hand_worked() -> None:
    # positives .5 .8, negatives .5 .2 : (.5 vs .5 tie = 1/2) + (.5 > .2) + 2 = 3.5 of 4
    assert auroc([0.5, 0.5, 0.2, 0.8], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert auroc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)
    assert math.isnan(auroc([0.1, 0.2], [0, 0]))
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_single_example() -> None:
    assert ece([0.7], [1]) == pytest.approx(0.3)
    assert ece_equal_width([0.7], [0]) == pytest.approx(0.7)
    assert mce([0.7], [1]) == pytest.approx(0.3)
    m = compute_metrics([1], [1], [0.7], [0.7])
    assert m["n"] == 1 and m["auroc"] is None and m["auroc_unsafe"] is None


def test_equal_width_edges_follow_histogram_convention() -> None:
    # 0.5 belongs to [0.5, 1] with 2 bins (not to [0, 0.5] as in sklearn's calibration_curve):
    #   one bin {.5, .9}, conf .7, acc .5 -> .2   (the other convention would give .25 + .45)
    assert ece_equal_width([0.5, 0.9], [1, 0], n_bins=2) == pytest.approx(0.2)
    # 0.0 goes to the first bin and 1.0 to the last: |1 - 0| / 2 + |0 - 1| / 2
    assert ece_equal_width([0.0, 1.0], [1, 0], n_bins=2) == pytest.approx(1.0)
    curve = reliability_curve([0.0, 0.5, 1.0], [0, 1, 1], n_bins=2, strategy="uniform")
    assert curve.counts.tolist() == [1, 2]


# --------------------------------------------------------------------------------------------
# Independent computations
# --------------------------------------------------------------------------------------------
def _random_case(seed: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 1.0, size=n)
    correct = (rng.uniform(size=n) < conf**2).astype(int)
    return conf, correct


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_equal_width_matches_sklearn_calibration_curve(seed: int, n_bins: int) -> None:
    calibration = pytest.importorskip("sklearn.calibration")
    conf, correct = _random_case(seed)
    prob_true, prob_pred = calibration.calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
    counts, _ = np.histogram(conf, bins=np.linspace(0.0, 1.0, n_bins + 1))
    counts = counts[counts > 0]
    expected = float(np.sum(counts / conf.size * np.abs(prob_true - prob_pred)))
    assert ece_equal_width(conf, correct, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    sk_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 8, size=300) / 8.0  # many ties
    positives = (rng.uniform(size=300) < 0.3 + 0.5 * scores).astype(int)
    assert auroc(scores, positives) == pytest.approx(sk_metrics.roc_auc_score(positives, scores), abs=1e-12)


def test_brier_and_nll_match_sklearn() -> None:
    sk_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    p = rng.uniform(0.01, 0.99, size=400)
    y = (rng.uniform(size=400) < p).astype(int)
    assert brier(p, y) == pytest.approx(sk_metrics.brier_score_loss(y, p), abs=1e-12)
    assert nll(p, y) == pytest.approx(sk_metrics.log_loss(y, p), abs=1e-12)


def _loop_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[float, float]:
    """Equal-mass ECE and MCE written as plainly as possible."""
    pairs = sorted(zip(conf.tolist(), correct.tolist(), strict=True), key=lambda pair: pair[0])
    k = min(n_bins, len(pairs))
    base, extra = divmod(len(pairs), k)
    total, worst, start = 0.0, 0.0, 0
    for b in range(k):
        size = base + (1 if b < extra else 0)
        chunk = pairs[start : start + size]
        start += size
        mean_conf = sum(c for c, _ in chunk) / size
        acc = sum(h for _, h in chunk) / size
        total += size / len(pairs) * abs(acc - mean_conf)
        worst = max(worst, abs(acc - mean_conf))
    return total, worst


@pytest.mark.parametrize(("seed", "n", "n_bins"), [(0, 500, 15), (1, 101, 15), (2, 7, 15), (3, 64, 10), (4, 30, 4)])
def test_equal_mass_ece_matches_loop(seed: int, n: int, n_bins: int) -> None:
    conf, correct = _random_case(seed, n)
    expected_ece, expected_mce = _loop_ece(conf, correct, n_bins)
    assert ece(conf, correct, n_bins=n_bins) == pytest.approx(expected_ece, abs=1e-12)
    assert mce(conf, correct, n_bins=n_bins) == pytest.approx(expected_mce, abs=1e-12)


def test_sce_matches_classwise_loop() -> None:
    rng = np.random.default_rng(11)
    p = rng.uniform(size=300)
    y = (rng.uniform(size=300) < p).astype(int)
    per_class = []
    for p_k, target in ((1 - p, 1 - y), (p, y)):
        counts, edges = np.histogram(p_k, bins=np.linspace(0, 1, 16))
        ids = np.clip(np.digitize(p_k, edges[1:-1]), 0, 14)
        gap = sum(
            (ids == b).sum() / p.size * abs(target[ids == b].mean() - p_k[ids == b].mean())
            for b in range(15)
            if (ids == b).any()
        )
        assert sum(counts) == p.size
        per_class.append(gap)
    assert sce(p, y) == pytest.approx(np.mean(per_class), abs=1e-12)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
def test_perfectly_calibrated_sample_has_small_ece() -> None:
    rng = np.random.default_rng(1234)
    conf = rng.uniform(0.5, 1.0, size=20_000)
    correct = (rng.uniform(size=conf.size) < conf).astype(int)
    assert ece(conf, correct) < 0.03
    assert ece_equal_width(conf, correct) < 0.03


def test_overconfident_sample_has_large_ece() -> None:
    rng = np.random.default_rng(99)
    conf = rng.uniform(0.95, 1.0, size=5_000)
    correct = (rng.uniform(size=conf.size) < 0.7).astype(int)
    assert ece(conf, correct) > 0.2
    assert ece_equal_width(conf, correct) > 0.2
    assert mce(conf, correct) >= ece(conf, correct)
    assert overconfident_ratio(conf, threshold=0.99) == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize("seed", [0, 5])
def test_swapping_safe_and_unsafe_leaves_proper_scores_unchanged(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=1_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    assert brier(1 - p, 1 - y) == pytest.approx(brier(p, y), abs=1e-12)
    assert nll(1 - p, 1 - y) == pytest.approx(nll(p, y), abs=1e-12)
    assert sce(1 - p, 1 - y) == pytest.approx(sce(p, y), abs=1e-9)
    assert auroc(1 - p, 1 - y) == pytest.approx(auroc(p, y), abs=1e-12)


def test_nll_clips_certain_mistakes() -> None:
    value = nll([0.0, 1.0], [1, 1])
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-12) / 2)
    assert nll([0.0, 1.0], [0, 1]) == pytest.approx(-math.log(1 - 1e-12))


def test_metric_ranges_and_orderings() -> None:
    conf, correct = _random_case(21, 800)
    for value in (ece(conf, correct), ece_equal_width(conf, correct), mce(conf, correct)):
        assert 0.0 <= value <= 1.0
    assert mce(conf, correct) >= ece(conf, correct)
    assert 0.5 < auroc(conf, correct) <= 1.0  # confidence predicts correctness here
    assert auroc(-conf, correct) == pytest.approx(1 - auroc(conf, correct))


def test_inputs_accept_lists_bools_and_float_labels() -> None:
    assert ece([0.9, 0.6], [True, False]) == ece(np.array([0.9, 0.6]), np.array([1, 0]))
    assert accuracy([1.0, 0.0], [1, 0]) == 1.0
    assert isinstance(brier((0.2, 0.8), (0, 1)), float)


# --------------------------------------------------------------------------------------------
# Reliability curve
# --------------------------------------------------------------------------------------------
def test_reliability_curve_quantile_matches_ece() -> None:
    conf, correct = _random_case(8, 300)
    curve = reliability_curve(conf, correct, n_bins=10)
    assert isinstance(curve, ReliabilityCurve)
    assert curve.counts.sum() == 300 and len(curve.counts) == 10
    assert curve.edges.shape == (10, 2)
    assert np.all(curve.edges[:, 0] <= curve.mean_confidence)
    assert np.all(curve.mean_confidence <= curve.edges[:, 1])
    assert np.all(np.diff(curve.mean_confidence) >= 0)
    gap = np.sum(curve.counts / 300 * np.abs(curve.accuracy - curve.mean_confidence))
    assert gap == pytest.approx(ece(conf, correct, n_bins=10))
    with pytest.raises(AttributeError):
        curve.counts = np.array([1])  # type: ignore[misc]


def test_reliability_curve_uniform_skips_empty_bins() -> None:
    curve = reliability_curve([0.05, 0.07, 0.95], [0, 1, 1], n_bins=10, strategy="uniform")
    assert curve.counts.tolist() == [2, 1]
    assert curve.accuracy.tolist() == pytest.approx([0.5, 1.0])
    assert curve.mean_confidence.tolist() == pytest.approx([0.06, 0.95])
    np.testing.assert_allclose(curve.edges, [[0.0, 0.1], [0.9, 1.0]])
    gap = np.sum(curve.counts / 3 * np.abs(curve.accuracy - curve.mean_confidence))
    assert gap == pytest.approx(ece_equal_width([0.05, 0.07, 0.95], [0, 1, 1], n_bins=10))


def test_reliability_curve_more_bins_than_examples() -> None:
    curve = reliability_curve([0.2, 0.9, 0.4], [0, 1, 1], n_bins=15)
    assert curve.counts.tolist() == [1, 1, 1]
    assert curve.mean_confidence.tolist() == pytest.approx([0.2, 0.4, 0.9])


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: brier([0.2, 1.5, -3.0, 2.0], [0, 1, 0, 1]),
            r"p_unsafe has 3 values outside \[0, 1\]; pass probabilities, not logits",
        ),
        (lambda: ece([0.2, 0.5], [0, 1, 1]), r"lengths differ: confidence has 2, correct has 3"),
        (lambda: compute_metrics([1, 0], [1, 0], [0.5, 0.5], [0.5]), r"confidence has 1"),
        (lambda: ece([], []), r"confidence has shape \(0,\); pass a non-empty 1-D array"),
        (lambda: ece([[0.5, 0.5]], [[1, 0]]), r"confidence has shape \(1, 2\)"),
        (lambda: nll([0.5, float("nan")], [1, 0]), r"p_unsafe has 1 non-finite values"),
        (lambda: auroc([0.5, float("inf")], [1, 0]), r"scores has 1 non-finite"),
        (lambda: accuracy([0, 2, 1], [0, 1, 1]), r"y_unsafe has 1 values not in \{0, 1\}"),
        (lambda: ece([0.5, 0.6], [0.5, 1]), r"correct has 1 values not in \{0, 1\}"),
        (lambda: sce([0.5], ["unsafe"]), r"y_unsafe is not numeric"),
        (lambda: ece([0.5], [1], n_bins=0), r"n_bins must be a positive integer, got 0"),
        (lambda: ece_equal_width([0.5], [1], n_bins=2.5), r"n_bins must be a positive integer"),
        (lambda: reliability_curve([0.5], [1], strategy="kmeans"), r"strategy must be 'quantile' or 'uniform'"),
        (lambda: overconfident_ratio([0.5], threshold=1.5), r"threshold must lie in \[0, 1\]"),
        (lambda: nll([0.5], [1], eps=0.0), r"eps must lie in \(0, 0.5\)"),
    ],
)
def test_bad_inputs_raise_calibration_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        call()


def test_calibration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        brier([2.0], [1])


def test_module_uses_numpy_only() -> None:
    source = open(metrics.__file__, encoding="utf-8").read()
    for banned in ("sklearn", "scipy", "torch"):
        assert f"import {banned}" not in source and f"from {banned}" not in source


def test_paired_bootstrap_finds_the_better_scorer_and_matches_a_hand_loop() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(0, 0.6, 300)
    weak = y + rng.normal(0, 2.0, 300)
    diffs = paired_bootstrap(auroc, weak, good, y, n_boot=400, seed=5)
    assert diffs.shape == (400,)
    assert np.percentile(diffs, 2.5) > 0  # good beats weak on (almost) every resample
    # the same resamples as drawing them by hand with the same seed
    draw = np.random.default_rng(5)
    for k in range(3):
        i = draw.integers(0, 300, 300)
        assert diffs[k] == pytest.approx(auroc(good[i], y[i]) - auroc(weak[i], y[i]))
    assert np.all(paired_bootstrap(auroc, good, good, y, n_boot=20) == 0.0)


def test_paired_bootstrap_skips_one_class_resamples_and_rejects_bad_input() -> None:
    diffs = paired_bootstrap(auroc, [0.2, 0.1, 0.9], [0.3, 0.1, 0.8], [0, 0, 1], n_boot=200, seed=0)
    assert 0 < diffs.size < 200  # resamples without the one positive are skipped, not NaN
    assert np.isfinite(diffs).all()
    with pytest.raises(CalibrationError, match="lengths differ"):
        paired_bootstrap(auroc, [0.1, 0.2], [0.1], [0, 1])
    with pytest.raises(CalibrationError, match="n_boot"):
        paired_bootstrap(auroc, [0.1, 0.2], [0.1, 0.3], [0, 1], n_boot=0)
