"""Loader for the LightGCN paper's dataset split format (Gowalla, Yelp2018, Amazon-Book).

``train.txt`` / ``test.txt``: one line per user, ``user item item ...`` (space separated, indices
already dense from 0). A user line with no items is allowed. Parsing is vectorized: the whole file
is read as one token stream and split by line lengths, no Python loop over interactions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.core.interactions import Interactions


def read_user_item_lists(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) int64 arrays, one entry per listed item, in file order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: LightGCN split file not found")
    text = path.read_bytes()
    lines = [line for line in text.split(b"\n") if line.strip()]
    tokens_per_line = np.fromiter((line.count(b" ") + 1 for line in (l.strip() for l in lines)), dtype=np.int64,
                                  count=len(lines))
    tokens = np.array(b" ".join(l.strip() for l in lines).split(), dtype=np.int64)
    if tokens.size != tokens_per_line.sum():
        raise ValueError(f"{path}: malformed line (repeated or stray whitespace); expected 'user item item ...'")
    starts = np.concatenate([[0], np.cumsum(tokens_per_line)[:-1]])
    users = tokens[starts]
    is_item = np.ones(tokens.size, dtype=bool)
    is_item[starts] = False
    return np.repeat(users, tokens_per_line - 1), tokens[is_item]


def load_lightgcn_split(directory: str | Path) -> tuple[Interactions, Interactions, int, int]:
    """(train, test, num_users, num_items) from ``directory``/train.txt and test.txt."""
    directory = Path(directory)
    train_user, train_item = read_user_item_lists(directory / "train.txt")
    test_user, test_item = read_user_item_lists(directory / "test.txt")
    num_users = int(max(train_user.max(initial=-1), test_user.max(initial=-1))) + 1
    num_items = int(max(train_item.max(initial=-1), test_item.max(initial=-1))) + 1

    def make(user: np.ndarray, item: np.ndarray) -> Interactions:
        return Interactions(user, item, np.ones(user.size, dtype=np.float32))

    return make(train_user, train_item), make(test_user, test_item), num_users, num_items
