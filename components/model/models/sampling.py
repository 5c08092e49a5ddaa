"""Training triples for BPR, vectorized: one (user, positive, negative) per training pair per epoch.

As in the official LightGCN code every epoch draws fresh negatives uniformly over the catalogue and
rejects the user's positives; here the rejection is a binary search of (user * num_items + item)
keys in the sorted positive keys, redrawn in vectorized rounds (no per-sample Python loop).
Each epoch's draw depends only on (seed, epoch), so a resumed run repeats it exactly.
"""

from __future__ import annotations

import numpy as np

MAX_REJECTION_ROUNDS = 64


def positive_keys(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    return np.unique(user.astype(np.int64) * np.int64(num_items) + item.astype(np.int64))


def sample_negatives(users: np.ndarray, sorted_pos_keys: np.ndarray, num_items: int,
                     rng: np.random.Generator) -> np.ndarray:
    """One uniform item per user that is not among the user's positives."""
    negatives = rng.integers(0, num_items, size=users.shape[0], dtype=np.int64)
    todo = np.arange(users.shape[0])
    for _ in range(MAX_REJECTION_ROUNDS):
        keys = users[todo] * np.int64(num_items) + negatives[todo]
        pos = np.minimum(np.searchsorted(sorted_pos_keys, keys), max(sorted_pos_keys.size - 1, 0))
        clash = sorted_pos_keys[pos] == keys if sorted_pos_keys.size else np.zeros(todo.size, bool)
        todo = todo[clash]
        if todo.size == 0:
            return negatives
        negatives[todo] = rng.integers(0, num_items, size=todo.size, dtype=np.int64)
    bad = np.unique(users[todo])[:5]
    raise ValueError(f"no negative found after {MAX_REJECTION_ROUNDS} rounds for users {bad.tolist()} "
                     f"(they interacted with (almost) all {num_items} items)")


def sample_epoch(user: np.ndarray, item: np.ndarray, num_items: int, seed: int, epoch: int,
                 sorted_pos_keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled (users, positives, negatives) covering every training pair once."""
    rng = np.random.default_rng([seed, epoch])
    keys = positive_keys(user, item, num_items) if sorted_pos_keys is None else sorted_pos_keys
    order = rng.permutation(user.shape[0])
    users, positives = user[order].astype(np.int64), item[order].astype(np.int64)
    return users, positives, sample_negatives(users, keys, num_items, rng)
