"""Column kinds (``KindFacts``): the one-pass check for text columns finds what the per-value loop finds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.data.coercion import KindFacts


def loop_types(values: pd.Series) -> frozenset[str]:
    """The Python types of the present values, one value at a time (what the fast path must equal)."""
    return frozenset(type(v).__name__ for v in values.dropna())


@pytest.mark.parametrize(("values", "kind"), [
    (["u1", None, "u2", np.nan, pd.NA], "string"),  # text with every null pandas reads: the one-pass check
    (["a", pd.NaT], "string"),  # NaT among text: not the one-pass check's "string", the loop drops it too
    (["u1", 13], "mixed(integer,string)"),  # JSON text beside a number: a changed type, never "string"
    ([13, 13.0, None], "integer"),  # JSON 13 beside 13.0
    ([13, 13.5], "mixed(float,integer)"),  # a fraction beside an integer
    ([None, None], "string"),  # no value: no kind seen, read as text
])
def test_kind_of_an_object_column_is_what_its_values_are(values, kind):
    column = pd.Series(values, dtype=object)
    facts = KindFacts.of(column)
    assert (facts.family, facts.types, facts.kind) == ("object", loop_types(column), kind)


def test_a_text_chunk_merged_with_a_mixed_chunk_is_mixed():
    text, mixed = KindFacts.of(pd.Series(["a", "b"], dtype=object)), KindFacts.of(pd.Series(["c", 7], dtype=object))
    assert text.merge(mixed).kind == "mixed(integer,string)"
    assert text.merge(text).kind == "string"
