"""Metrics and alpha search against hand computations (numpy only, no TensorFlow)."""

import numpy as np
import pytest

from pktnin.trainer.fusion import DEFAULT_GRID, fuse, search_alpha
from pktnin.trainer.metrics import (
    classification_report,
    confusion_matrix,
    evaluation_report,
    flow_probabilities,
    group_bootstrap_macro_f1,
    macro_f1,
    macro_f1_of_confusions,
)

CLASSES = ["a", "b", "c", "d"]
# 10 samples; class d never occurs and is never predicted.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 2])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    expected = np.array(
        [
            [2, 1, 1, 0],
            [1, 2, 0, 0],
            [0, 0, 3, 0],
            [0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(cm, expected)


def test_per_class_and_macro_by_hand():
    r = classification_report(Y_TRUE, Y_PRED, CLASSES)
    # a: TP 2, FP 1, FN 2 -> P 2/3, R 1/2, F1 = 2*(2/3)(1/2)/(2/3+1/2) = 4/7
    # b: TP 2, FP 1, FN 1 -> P 2/3, R 2/3, F1 2/3
    # c: TP 3, FP 1, FN 0 -> P 3/4, R 1, F1 6/7
    # d: no support, no predictions -> all 0 and left out of the macro averages
    expected = {
        "a": (2 / 3, 1 / 2, 4 / 7, 4),
        "b": (2 / 3, 2 / 3, 2 / 3, 3),
        "c": (3 / 4, 1.0, 6 / 7, 3),
        "d": (0.0, 0.0, 0.0, 0),
    }
    for row in r["per_class"]:
        p, rc, f1, support = expected[row["class"]]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(rc)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    assert r["macro_classes"] == 3
    assert r["accuracy"] == pytest.approx(7 / 10)
    assert r["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert r["macro_recall"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert r["macro_f1"] == pytest.approx((4 / 7 + 2 / 3 + 6 / 7) / 3)
    assert macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx(r["macro_f1"])


def test_predicted_class_without_support_counts_as_zero():
    # d predicted once but never true: precision 0 (FP only), recall 0 (no support), and it enters the macro.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 3, 1, 1])
    r = classification_report(y_true, y_pred, CLASSES)
    d = r["per_class"][3]
    assert (d["precision"], d["recall"], d["f1"], d["predicted"]) == (0.0, 0.0, 0.0, 1)
    assert r["macro_classes"] == 3
    # a: P 1, R 1/2, F1 2/3; b: P 1, R 1, F1 1; d: 0
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_matches_scikit_learn_on_random_labels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 6, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 7, 500))
    classes = [str(i) for i in range(7)]
    r = classification_report(y_true, y_pred, classes)
    p, rc, f1, _ = sklearn_metrics.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert (r["macro_precision"], r["macro_recall"], r["macro_f1"]) == pytest.approx((p, rc, f1))
    expected_cm = sklearn_metrics.confusion_matrix(y_true, y_pred, labels=range(7))
    np.testing.assert_array_equal(r["confusion_matrix"], expected_cm)


def test_report_is_json_serializable():
    import json

    probs = np.eye(4)[Y_PRED] * 0.7 + 0.075
    r = evaluation_report(probs, Y_TRUE, CLASSES, flow_ids=np.arange(10) // 2)
    json.loads(json.dumps(r))


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4)
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix(np.array([0, 1, 2]), np.array([0, 1]), 4)


def test_flow_level_averages_probabilities_per_flow():
    # Flow 7 (label b): mean a = (0.9 + 0.2 + 0.3) / 3 = 0.467, b = 0.533 -> b.
    # Flow 3 (label a): one confident a and two weak b's: mean a = (0.99 + 0.45 + 0.45) / 3 = 0.63 -> a,
    # although most of its packets (2 of 3) are predicted b: averaging is not a packet-majority vote.
    probs = np.array(
        [
            [0.9, 0.1],
            [0.2, 0.8],
            [0.3, 0.7],
            [0.99, 0.01],
            [0.45, 0.55],
            [0.45, 0.55],
        ]
    )
    y_true = np.array([1, 1, 1, 0, 0, 0])
    flows = np.array([7, 7, 7, 3, 3, 3], dtype=np.int64)
    ids, mean, labels, counts = flow_probabilities(probs, y_true, flows)
    np.testing.assert_array_equal(ids, [3, 7])
    np.testing.assert_allclose(mean, [[0.63, 0.37], [1.4 / 3, 1.6 / 3]])
    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_array_equal(counts, [3, 3])

    r = evaluation_report(probs, y_true, ["a", "b"], flows)
    assert r["flow"]["flows"] == 2
    assert r["flow"]["accuracy"] == 1.0
    assert r["packet"]["accuracy"] == pytest.approx(3 / 6)


def test_flow_label_is_the_majority_packet_label():
    probs = np.full((3, 2), 0.5)
    _, _, labels, _ = flow_probabilities(probs, np.array([1, 0, 1]), np.array([5, 5, 5]))
    np.testing.assert_array_equal(labels, [1])


# ------------------------------------------------------------------------------------------------ alpha search


def _constructed_branches(n_per_class=60, seed=0):
    """4 classes. Branch 1 (header) knows classes 0-1 confidently and guesses weakly on 2-3; branch 2 (body) the
    opposite, but with weaker confidence, so the best mix leans towards branch 2 to let its weak votes count."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class)
    n = y.size
    p1 = np.full((n, 4), 0.0)
    p2 = np.full((n, 4), 0.0)
    for i, c in enumerate(y):
        wrong = (c + 1) % 4
        if c < 2:  # branch 1 right and sure, branch 2 wrong and unsure
            p1[i, c] = 0.9
            p1[i, wrong] = 0.1
            p2[i, wrong] = 0.4 + 0.05 * rng.random()
            p2[i, c] = 0.3
            p2[i, (c + 2) % 4] = 1 - p2[i].sum()
        else:  # branch 2 right with margin 0.2, branch 1 wrong with margin 0.6
            p2[i, c] = 0.6
            p2[i, wrong] = 0.4
            p1[i, wrong] = 0.8
            p1[i, c] = 0.2
    return p1, p2, y


def test_search_alpha_finds_the_known_best_mix():
    p1, p2, y = _constructed_branches()
    alpha, scores = search_alpha(p1, p2, y)
    assert scores.shape == DEFAULT_GRID.shape
    # Alone, each branch gets half the classes right.
    assert scores[0] < 0.6 and scores[-1] < 0.6  # alpha 0 = branch 2 only, alpha 1 = branch 1 only
    # Classes 2-3 need alpha*0.2 + (1-alpha)*0.6 > alpha*0.8 + (1-alpha)*0.4 -> alpha < 0.25.
    # Classes 0-1 need alpha*0.9 + (1-alpha)*0.3 > alpha*0.1 + (1-alpha)*p2_wrong (p2_wrong up to 0.45)
    # -> alpha > 0.15/0.95 = 0.158 in the worst case. So every alpha in [0.16, 0.24] is perfect; the pick is
    # the one closest to 0.5: 0.24.
    perfect = DEFAULT_GRID[scores == 1.0]
    assert perfect.min() == pytest.approx(0.16) and perfect.max() == pytest.approx(0.24)
    assert alpha == pytest.approx(0.24)
    fused = fuse(p1, p2, alpha).argmax(axis=1)
    np.testing.assert_array_equal(fused, y)


def test_search_alpha_ties_go_to_the_value_closest_to_half():
    y = np.array([0, 1, 0, 1])
    p = np.eye(2)[y]
    alpha, scores = search_alpha(p, p, y)  # every alpha is perfect
    assert np.all(scores == 1.0)
    assert alpha == 0.5
    # Symmetric tie around 0.5 without 0.5 itself: the smaller one.
    alpha, _ = search_alpha(p, p, y, grid=np.array([0.2, 0.4, 0.6]))
    assert alpha == 0.4


def test_search_alpha_rejects_mismatched_input():
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError):
        search_alpha(p, np.full((3, 3), 1 / 3), np.array([0, 1, 0]))
    with pytest.raises(ValueError):
        search_alpha(p, p, np.array([0, 1]))
    with pytest.raises(ValueError):
        search_alpha(p, p, np.array([0, 1, 0]), grid=np.array([1.5]))


def test_macro_f1_of_a_stack_of_confusions_matches_macro_f1():
    rng = np.random.default_rng(3)
    cases = [(rng.integers(0, 5, 200), rng.integers(0, 5, 200)) for _ in range(4)] + [(Y_TRUE, Y_PRED)]
    stack = np.stack([confusion_matrix(t, p, 5) for t, p in cases])
    expected = [macro_f1(t, p, 5) for t, p in cases]
    np.testing.assert_allclose(macro_f1_of_confusions(stack), expected, rtol=1e-12)


def test_group_bootstrap_draws_whole_groups():
    # Two groups (capture files): A holds samples 0..4, B samples 5..9. A resample of two groups is AA, AB or BB.
    groups = np.array(["A"] * 5 + ["B"] * 5)
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 1, 0, 0])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2, 2, 0, 1])
    a, b = slice(0, 5), slice(5, 10)

    def doubled(part):
        return macro_f1(np.r_[y_true[part], y_true[part]], np.r_[y_pred[part], y_pred[part]], 3)

    possible = {"AA": doubled(a), "AB": macro_f1(y_true, y_pred, 3), "BB": doubled(b)}
    assert len(set(np.round(list(possible.values()), 12))) == 3  # the three resamples are distinguishable
    got = group_bootstrap_macro_f1(y_true, {"m": y_pred}, groups, 3, replicates=4000, seed=1, stratify=False)["m"]
    share = {k: np.mean(np.isclose(got, v)) for k, v in possible.items()}
    assert sum(share.values()) == pytest.approx(1.0)
    assert share["AA"] == pytest.approx(0.25, abs=0.03)
    assert share["AB"] == pytest.approx(0.5, abs=0.03)
    assert share["BB"] == pytest.approx(0.25, abs=0.03)


def test_stratified_group_bootstrap_draws_within_majority_labels():
    # Groups A, B hold mostly class 0, group C mostly class 1. Stratified: C is in every resample exactly once,
    # A and B share two draws; unstratified, C is missing from (2/3)^3 of the resamples.
    groups = np.array(list("AAABBBCCC"))
    y_true = np.array([0, 0, 1, 0, 0, 0, 1, 1, 0])
    y_pred = np.array([0, 1, 1, 0, 0, 1, 1, 0, 0])
    stratified = group_bootstrap_macro_f1(y_true, {"m": y_pred}, groups, 2, replicates=3000, seed=2)["m"]
    c = slice(6, 9)
    possible = [
        macro_f1(np.r_[y_true[x], y_true[z], y_true[c]], np.r_[y_pred[x], y_pred[z], y_pred[c]], 2)
        for x, z in ((slice(0, 3), slice(0, 3)), (slice(0, 3), slice(3, 6)), (slice(3, 6), slice(3, 6)))
    ]
    assert np.all(np.isclose(stratified[:, None], possible).any(axis=1))
    plain = group_bootstrap_macro_f1(y_true, {"m": y_pred}, groups, 2, replicates=3000, seed=2, stratify=False)["m"]
    assert not np.all(np.isclose(plain[:, None], possible).any(axis=1))


def test_group_bootstrap_is_paired_across_models():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 300)
    groups = rng.integers(0, 12, 300)
    noisy = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, 4, 300))
    got = group_bootstrap_macro_f1(y_true, {"perfect": y_true, "noisy": noisy, "copy": noisy.copy()}, groups, 4, 500)
    assert np.all(got["perfect"] == 1.0)
    np.testing.assert_array_equal(got["noisy"], got["copy"])  # same resamples for every model
    assert got["noisy"].std() > 0  # resampling groups moves the score
    one_group = group_bootstrap_macro_f1(y_true, {"noisy": noisy}, np.zeros(300), 4, 50)["noisy"]
    np.testing.assert_allclose(one_group, macro_f1(y_true, noisy, 4))  # a single group is always drawn whole


def test_group_bootstrap_rejects_mismatched_groups():
    with pytest.raises(ValueError, match="groups"):
        group_bootstrap_macro_f1(Y_TRUE, {"m": Y_PRED}, np.zeros(3), 4)
