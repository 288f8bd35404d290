"""GEARS-style perturbation conditions (``ctrl``, ``A``, ``A+ctrl``, ``A+B``)."""

from __future__ import annotations

__all__ = ["parse_condition"]


def parse_condition(
    condition: str, control_category: str = "ctrl", delimiter: str = "+"
) -> tuple[str, ...]:
    """Target genes of a GEARS-style condition string.

    ``"ctrl"`` -> ``()``, ``"A"`` and ``"A+ctrl"`` -> ``("A",)``, ``"A+B"`` -> ``("A", "B")``
    (with ``control_category="ctrl"`` and ``delimiter="+"``).

    Raises
    ------
    ValueError
        For a non-string, an empty part (``""``, ``"A++B"``, ``"+A"``, ``"A+"``), a part with
        surrounding whitespace, or a gene named twice.
    """
    if not isinstance(condition, str):
        raise ValueError(f"Perturbation condition {condition!r} is not a string.")
    parts = condition.split(delimiter)
    if any(p == "" or p != p.strip() for p in parts):
        raise ValueError(
            f"Malformed perturbation condition {condition!r}: expected gene names joined by "
            f"{delimiter!r} (e.g. 'A', 'A{delimiter}{control_category}', 'A{delimiter}B') or "
            f"{control_category!r}."
        )
    genes = tuple(p for p in parts if p != control_category)
    if len(set(genes)) != len(genes):
        raise ValueError(f"Perturbation condition {condition!r} names a gene twice.")
    return genes
