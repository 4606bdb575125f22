"""The demo's scorecard: ROC AUC against its pairwise definition, dedup recall and precision on a
hand-made ground truth."""

import numpy as np

from mmdata.demo import _dedup_quality, _roc_auc


def test_roc_auc_is_the_share_of_correctly_ordered_pairs():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # rounding makes ties
    labels = rng.random(200) < 0.7
    positives, negatives = scores[labels], scores[~labels]
    pairwise = ((positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])).mean()
    assert abs(_roc_auc(scores, labels) - pairwise) < 1e-12
    assert _roc_auc(scores, np.ones(200, bool)) is None


def test_dedup_recall_and_precision():
    def truth(row, kind, group=None, of=None, description=None):
        return {"row": row, "kind": kind, "dup_group": group, "duplicate_of": of, "description": description}

    truth_rows = {
        "u0": truth(0, "clean", 0, None, "a"), "u1": truth(1, "exact_dup", 0, 0, "a"),
        "u2": truth(2, "clean", 2, None, "b"), "u3": truth(3, "near_dup", 2, 2, "b"),
        "u4": truth(4, "clean", None, None, "c"), "u5": truth(5, "clean", None, None, "d"),
    }
    rows = [
        {"key": "k0", "uid": "u0", "duplicate_of": None, "dup_reason": None},
        {"key": "k1", "uid": "u1", "duplicate_of": "k0", "dup_reason": "exact"},  # found
        {"key": "k2", "uid": "u2", "duplicate_of": None, "dup_reason": None},
        {"key": "k3", "uid": "u3", "duplicate_of": None, "dup_reason": None},  # missed
        {"key": "k4", "uid": "u4", "duplicate_of": None, "dup_reason": None},
        {"key": "k5", "uid": "u5", "duplicate_of": "k4", "dup_reason": "semantic"},  # a false positive
    ]
    quality = _dedup_quality(rows, truth_rows)
    assert quality["recall"]["exact_dup"] == {"found": 1, "planted": 1, "recall": 1.0}
    assert quality["recall"]["near_dup"] == {"found": 0, "planted": 1, "recall": 0.0}
    assert quality["recall"]["semantic_dup"]["recall"] is None
    assert quality["precision"]["exact"]["precision"] == 1.0
    assert quality["precision"]["semantic"] == {"flagged": 1, "correct": 0, "precision": 0.0}
