"""Duplicate-aware, reproducible train/calib/test splits.

Rows are first grouped by *normalised* text, so that copies of the same text
(verbatim or up to trivial differences) always land in the same split and
cannot leak from train into calibration or test.

Normalisation (:func:`normalise_text`), applied in this order:

1. Unicode NFKC normalisation (folds compatibility forms, e.g. full-width
   letters or ligatures, into their plain equivalents);
2. ``str.casefold()`` (aggressive lower-casing);
3. every character whose Unicode category is punctuation (``P*``: quotes,
   dashes, brackets, ``!?.,;:`` ...) or a symbol (``S*``: ``<>~+=$`` ...)
   is deleted;
4. every run of whitespace becomes a single space, and the result is stripped.

Assignment (:func:`assign_splits`): groups are listed in order of first
appearance, shuffled with ``numpy.random.default_rng(seed).permutation``, and
then assigned greedily, whole groups only: a group goes to ``train`` if it
still fits in the train size, else to ``calib`` if it still fits there, else
to ``test``. Because later (smaller) groups keep filling the earlier splits,
``train`` and ``calib`` get exactly the requested sizes whenever enough
single rows are left to top them up (always the case for the datasets shipped
with guardcal); ``test`` gets everything else.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Final

import numpy as np

from guardcal.errors import DataError

TRAIN: Final = "train"
CALIB: Final = "calib"
TEST: Final = "test"
SPLIT_NAMES: Final = (TRAIN, CALIB, TEST)

_DROPPED_CATEGORIES: Final = ("P", "S")


def normalise_text(text: str) -> str:
    """Return the key used to detect duplicates (see the module docstring).

    >>> normalise_text("  Hello,   WORLD!! <Person>")
    'hello world person'
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in folded if unicodedata.category(ch)[0] not in _DROPPED_CATEGORIES)
    return " ".join(kept.split())


def group_by_text(texts: Sequence[str]) -> list[list[int]]:
    """Group row indices by normalised text.

    Returns every group (singletons included) in order of first appearance;
    the indices inside a group are ascending.
    """
    groups: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        groups.setdefault(normalise_text(text), []).append(index)
    return list(groups.values())


def duplicate_groups(texts: Sequence[str]) -> list[list[int]]:
    """Return only the groups of two or more rows with the same normalised text."""
    return [group for group in group_by_text(texts) if len(group) > 1]


def assign_splits(texts: Sequence[str], *, train_size: int, calib_size: int, seed: int) -> dict[str, list[int]]:
    """Split row indices into ``train``/``calib``/``test`` (see module docstring).

    Args:
        texts: the text of every row; position ``i`` is row index ``i``.
        train_size: wanted number of rows in ``train``.
        calib_size: wanted number of rows in ``calib``.
        seed: seed for ``numpy.random.default_rng``.

    Returns:
        ``{"train": [...], "calib": [...], "test": [...]}``: ascending row
        indices; the three lists are disjoint and together cover every row.

    Raises:
        DataError: if the sizes are negative or exceed the number of rows.
    """
    total = len(texts)
    if train_size < 0 or calib_size < 0 or train_size + calib_size > total:
        raise DataError(
            f"cannot split {total} rows into train={train_size} and "
            f"calib={calib_size}: sizes must be >= 0 and sum to at most {total}"
        )
    groups = group_by_text(texts)
    order = np.random.default_rng(seed).permutation(len(groups))
    limits = {TRAIN: train_size, CALIB: calib_size}
    result: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for position in order:
        group = groups[int(position)]
        target = TEST
        for name in (TRAIN, CALIB):
            if len(result[name]) + len(group) <= limits[name]:
                target = name
                break
        result[target].extend(group)
    return {name: sorted(indices) for name, indices in result.items()}
