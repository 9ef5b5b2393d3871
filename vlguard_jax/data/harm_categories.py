"""VLGuard's harm categories: one label per unsafe image, `category/subcategory` (e.g. "privacy/personal data"), and
the values that name a label (the label, its category or its subcategory), shared by training's hold-out
(`data.safety_exclude_categories`) and the sweep's per-category scores, so both mean the same records."""

from __future__ import annotations

from typing import Iterable, Sequence

from vlguard_jax.data.sources import DataError


def label(category: str | None, subcategory: str | None) -> str:
    """As `sources.category_counts` names an unsafe image: "category/subcategory", or the category alone."""
    return "/".join(filter(None, (category, subcategory)))


def names(label: str) -> set[str]:
    """The values that name `label`: itself, its category and its subcategory (none for an empty label)."""
    return {label, *label.split("/", 1)} if label else set()


def named(values: Sequence[str], label: str) -> bool:
    """Whether any of `values` names `label`."""
    return bool(names(label).intersection(values))


def check(values: Sequence[str], labels: Iterable[str], where: str) -> None:
    """A DataError for the first of `values` that names none of `labels`, listing the values that would."""
    known = set().union(*map(names, labels))
    unknown = [value for value in values if value not in known]
    if unknown:
        raise DataError(f"{where}: the harm category {unknown[0]!r} names no record there; known: "
                        f"{', '.join(sorted(known)) or 'none (no unsafe images)'}")


def of_record(record: dict) -> str:
    """The label of a VLGuard json record: its harm category, "" for a safe image."""
    return "" if record.get("safe") else label(record.get("harmful_category"), record.get("harmful_subcategory"))
