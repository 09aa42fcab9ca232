"""Open-world test metrics on hand-built predictions: what the unseen-only matching
credits and what the all-sample matching with the seen outputs held to their classes
(``acc_unseen_strict``, ``discovered``, the confusion matrix) and ``absorbed_<k>`` say
about the same predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedssl.metrics import confusion_matrix, openworld_accuracy
from fedssl.runlog import metrics_csv


def labels(*groups: tuple[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) from (true class, its samples' predicted outputs) groups."""
    return (np.concatenate([[c] * len(p) for c, p in groups]).astype(np.int64),
            np.concatenate([p for _, p in groups]).astype(np.int64))


def test_absorbed_unseen_classes_score_1_under_the_unseen_only_matching_and_0_discovered():
    # seen 0 ("sandal") and 1; unseen 2 ("sneaker") all predicted as output 0, unseen 3
    # all as output 1: the unseen-only matching maps 0 -> 2 and 1 -> 3 and calls every
    # unseen sample right; one matching over all samples keeps outputs 0 and 1 for the
    # seen classes and gives 2, 3 outputs that nothing is predicted as
    y, p = labels((0, [0] * 12), (1, [1] * 12), (2, [0] * 10), (3, [1] * 10))
    m = openworld_accuracy(y, p, num_classes=4, num_seen=2, global_unseen=[2])
    assert m["acc_unseen"] == 1.0 and m["acc_global_unseen"] == 1.0  # the ORCA protocol's credit
    assert m["acc_seen"] == 1.0
    assert m["acc_unseen_strict"] == 0.0
    assert m["discovered"] == 0
    assert m["absorbed_2"] == 1.0 and m["absorbed_3"] == 1.0
    assert m["acc_all"] == pytest.approx(24 / 44)


def test_confusion_matrix_orders_outputs_by_the_all_sample_matching():
    y, p = labels((0, [0, 0, 1]), (1, [2, 2, 0]), (2, [1, 1, 1, 2]))
    # by hand: counts[output][class] = [[2,1,0],[1,0,3],[0,2,1]]; the best one-to-one
    # matching is 0->0, 2->1, 1->2 (2 + 2 + 3 = 7, every other assignment less)
    cm = confusion_matrix(y, p, num_classes=3, num_seen=1)
    assert cm["output_of_class"] == [0, 2, 1]
    assert cm["counts"] == [[2, 0, 1],   # class 0: outputs 0, 2, 1
                            [1, 2, 0],   # class 1
                            [0, 1, 3]]   # class 2
    m = openworld_accuracy(y, p, num_classes=3, num_seen=1)
    assert m["acc_all"] == pytest.approx(np.trace(cm["counts"]) / len(y)) == pytest.approx(0.7)
    # the diagonal: seen rows are acc_seen, unseen rows acc_unseen_strict
    assert m["acc_seen"] == pytest.approx(2 / 3)
    assert m["acc_unseen_strict"] == pytest.approx((2 + 3) / 7)


def test_an_unseen_class_outnumbering_a_seen_one_in_its_output_gets_no_credit():
    # 12 sneakers (unseen 2) and 10 sandals (seen 0) all predicted "sandal" (output 0):
    # the unconstrained all-sample matching (acc_all's) hands output 0 to the sneakers;
    # seen accuracy still counts the sandals there, so the strict columns keep output 0
    # for the sandals and the sneakers are absorbed, not found
    y, p = labels((0, [0] * 10), (1, [1] * 10), (2, [0] * 12), (3, [3] * 10))
    m = openworld_accuracy(y, p, num_classes=4, num_seen=2)
    assert m["acc_unseen"] == 1.0 and m["acc_seen"] == 1.0
    assert m["acc_all"] == pytest.approx(32 / 42)  # sneakers in output 0, sandals lost
    assert m["acc_unseen_strict"] == pytest.approx(10 / 22)
    assert m["discovered"] == 1 and m["absorbed_2"] == 1.0 and m["absorbed_3"] == 0.0
    cm = confusion_matrix(y, p, num_classes=4, num_seen=2)
    assert cm["output_of_class"][:2] == [0, 1] and cm["counts"][2][0] == 12


def test_discovered_counts_unseen_classes_with_at_least_half_in_their_own_output():
    # seen 0, 1; unseen 2-5. The all-sample matching (worked by hand):
    # output 0 -> 0, 1 -> 1, 2 -> 2, 3 -> 3, 4 -> 4, 5 -> 5
    y, p = labels(
        (0, [0] * 20),
        (1, [1] * 20),
        (2, [2] * 6 + [0] * 4),        # 60 % in its own output: discovered
        (3, [3] * 4 + [4] * 3 + [1] * 3),  # 40 %: not
        (4, [4] * 5 + [0] * 5),        # exactly half: discovered
        (5, [1] * 9 + [5] * 1),        # absorbed by seen output 1: not
    )
    m = openworld_accuracy(y, p, num_classes=6, num_seen=2)
    assert m["discovered"] == 2
    assert m["acc_unseen_strict"] == pytest.approx((6 + 4 + 5 + 1) / 40)
    assert [m[f"absorbed_{k}"] for k in range(2, 6)] == pytest.approx([0.4, 0.3, 0.5, 0.9])
    # the unseen-only matching lets class 5 take seen output 1 (9 of 10 right)
    assert m["acc_class_5"] == pytest.approx(0.9)


def test_two_unseen_classes_in_one_output_discover_at_most_one():
    y, p = labels((0, [0] * 10), (1, [2] * 10), (2, [2] * 8 + [1] * 2))
    m = openworld_accuracy(y, p, num_classes=3, num_seen=1)
    assert m["discovered"] == 1 and m["acc_unseen_strict"] == pytest.approx(12 / 20)


def test_closed_world_leaves_the_strict_columns_empty():
    y, p = labels((0, [0, 1]), (1, [1, 1]), (2, [2, 0]))
    m = openworld_accuracy(y, p, num_classes=3, num_seen=3)
    assert m["acc_all"] == pytest.approx(4 / 6)
    assert math.isnan(m["acc_unseen_strict"]) and math.isnan(m["discovered"])
    assert not any(k.startswith("absorbed_") for k in m)
    header = metrics_csv([{"round": 1, **m}]).splitlines()[0].split(",")
    assert header.index("acc_unseen_strict") < header.index("acc_class_0")


def test_strict_columns_lead_the_extra_columns_of_metrics_csv():
    y, p = labels((0, [0] * 3), (1, [1, 2]), (2, [2, 2]))
    row = {"round": 1, "train_loss": 0.5, **openworld_accuracy(y, p, num_classes=3, num_seen=1)}
    header = metrics_csv([row]).splitlines()[0].split(",")
    assert header[:7] == ["round", "loss", "acc_all", "acc_seen", "acc_unseen", "acc_local_unseen",
                          "acc_global_unseen"]
    assert header[8:15] == ["acc_unseen_strict", "discovered", "absorbed_1", "absorbed_2",
                            "clients", "rejected_updates", "status"]  # the contract: the strict columns lead
