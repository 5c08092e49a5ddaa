"""Full-ranking metrics against numbers computed by hand (see the comments for the arithmetic)."""

import math

import numpy as np
import pytest
import torch

from components.model.metrics import embedding_scorer, evaluate_scorer, popularity_scorer
from components.core.interactions import Interactions


def inter(pairs):
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return Interactions(arr[:, 0], arr[:, 1], np.ones(len(arr), np.float32))


# 6 items. user0 train {0}, test {1, 3}; user1 train {1, 2}, test {0}; user2 cold (test {4}, no train);
# user3 train {5}, test {5} (seen in train -> dropped, user3 has nothing left to evaluate).
TRAIN = inter([(0, 0), (1, 1), (1, 2), (3, 5)])
TEST = inter([(0, 1), (0, 3), (1, 0), (2, 4), (3, 5)])
SCORES = torch.tensor([
    [9, 8, 1, 7, 3, 2],      # user0 ranking after masking item 0: 1, 3, 4, 5, 2
    [2.5, 9, 9, 2, 5, 3],    # user1 ranking after masking 1, 2: 4, 5, 0, 3
    [0, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 1],
], dtype=torch.float32)


def table_scorer(users):
    return SCORES[users].clone()


@pytest.mark.parametrize("batch", [1, 4096])
def test_metrics_match_hand_computation(batch):
    m = evaluate_scorer(table_scorer, TRAIN, TEST, num_items=6, ks=(1, 2, 3), user_batch_size=batch)
    assert m["users_evaluated"] == 2
    assert m["cold_users_skipped"] == 1
    assert m["users_without_unseen_test_items"] == 1
    assert m["test_pairs_seen_in_train"] == 1
    # K=1: user0 hits item 1 (recall 1/2, precision 1, ndcg 1/1: IDCG over min(2,1)=1 rank); user1 misses.
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["precision@1"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5)
    assert m["hitrate@1"] == pytest.approx(0.5)
    # K=2: user0 hits both (recall 1, ndcg 1); user1 still misses.
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(0.5)
    # K=3: user1 hits item 0 at rank 3: DCG 1/log2(4) = 0.5, IDCG 1 -> 0.5; precision 1/3.
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    assert m["hitrate@3"] == pytest.approx(1.0)
    # Coverage: top-1 {1} u {4}; top-2 {1,3} u {4,5}; top-3 {1,3,4} u {4,5,0}.
    assert m["coverage@1"] == pytest.approx(2 / 6)
    assert m["coverage@2"] == pytest.approx(4 / 6)
    assert m["coverage@3"] == pytest.approx(5 / 6)


def test_ndcg_partial_hits_with_more_test_items_than_k():
    # one user, test {2, 3, 4}, ranking 2, 0, 3, ... at K=2: DCG = 1, IDCG = 1 + 1/log2(3)
    train = inter([(0, 5)])
    test = inter([(0, 2), (0, 3), (0, 4)])
    scores = torch.tensor([[5, 0, 6, 4, -1, 9]], dtype=torch.float32)
    m = evaluate_scorer(lambda u: scores[u].clone(), train, test, num_items=6, ks=(2,))
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["recall@2"] == pytest.approx(1 / 3)


def test_embedding_scorer_is_inner_product():
    users = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    items = np.array([[1.0, 1.0], [3.0, 0.0], [0.0, -1.0]], np.float32)
    got = embedding_scorer(users, items)(torch.tensor([1, 0]))
    assert torch.equal(got, torch.tensor([[2.0, 0.0, -2.0], [1.0, 3.0, 0.0]]))


def test_popularity_ranks_by_training_users_with_index_tiebreak():
    train = inter([(0, 2), (1, 2), (2, 2), (0, 1), (1, 1), (3, 0), (3, 3)])
    scores = popularity_scorer(train, num_items=5)(torch.tensor([0]))
    assert torch.argsort(scores[0], descending=True, stable=True).tolist() == [2, 1, 0, 3, 4]
    # user 3's training items (0, 3) are excluded, so its top-2 is 2 then 1: test {1} hits at rank 2
    m = evaluate_scorer(popularity_scorer(train, 5), train, inter([(3, 1)]), num_items=5, ks=(1, 2))
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx(1 / math.log2(3))


def test_empty_test_gives_zeros_not_nan():
    m = evaluate_scorer(table_scorer, TRAIN, inter([]), num_items=6, ks=(20,))
    assert m["users_evaluated"] == 0 and m["recall@20"] == 0.0


def test_out_of_range_item_is_named():
    with pytest.raises(ValueError, match="test item index out of range"):
        evaluate_scorer(table_scorer, TRAIN, inter([(0, 9)]), num_items=6, ks=(2,))
