"""The course's severity routing table, and what it says for a class a binary model predicts.

The course pairs each CT severity category with a routing decision. The table names CT-0, CT-2 and
CT-3 only; CT-1 and CT-4 have no decision in it, so none is invented here. A binary model predicts a
class that pools categories (the course task's positive class is CT-2 or CT-3, which it cannot tell
apart), so the decision for a class lists the decision of every category in it that the table defines.
A model folder's task, categories and class names are checked against each other
(:func:`check_classes`) before a decision is drawn from them.
"""

from __future__ import annotations

from lungct.records import CATEGORIES, Task

DISCLAIMER = ("Research use only: not a medical device; do not use these outputs for diagnosis or for "
              "routing real patients.")

ROUTING = {
    "CT-0": "not consistent with pneumonia — inform the attending physician, refer to a specialist",
    "CT-2": "follow-up at home by a primary care physician",
    "CT-3": "immediate admission to a COVID-specialised hospital",
}


def class_name(categories: tuple[str, ...]) -> str:
    """``CT-0``, ``CT-2 or CT-3``, ``CT-1, CT-2, CT-3 or CT-4``."""
    if len(categories) <= 1:
        return "".join(categories)
    return f"{', '.join(categories[:-1])} or {categories[-1]}"


def class_names(task: Task) -> tuple[str, str]:
    """The names of label 0 and label 1 under a task."""
    return class_name(task.negative), class_name(task.positive)


def decisions(categories: tuple[str, ...]) -> dict[str, str]:
    """Category -> routing decision, for the categories of a class that the table defines."""
    return {c: ROUTING[c] for c in categories if c in ROUTING}


def decision_text(categories: tuple[str, ...]) -> str:
    """One line: the table's decision(s) for a predicted class, and which categories it has none for."""
    known = decisions(categories)
    missing = [c for c in categories if c not in ROUTING]
    if len(known) == 1 and not missing:
        return next(iter(known.values()))
    parts = [f"if {c}: {d}" for c, d in known.items()]
    if missing:
        parts.append(f"{' / '.join(missing)}: no decision in the course's table")
    return "; ".join(parts)


def check_classes(task: Task, negative: tuple[str, ...], positive: tuple[str, ...], classes: tuple[str, str]) -> None:
    """Refuse categories or class names that contradict the task they claim, so no decision is drawn from them.

    A model folder whose ``positive`` named CT-0 would route a normal scan as a sick one, and its class
    names would say so in words that look right; every field must be the task's own.

    Raises:
        ValueError: A field contradicts the task (the message starts with the field's name).
    """
    for field, value, expected in (("negative", negative, task.negative), ("positive", positive, task.positive)):
        unknown = [c for c in value if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"{field}: unknown categories {unknown} (categories are {', '.join(CATEGORIES)})")
        if tuple(value) != tuple(expected):
            raise ValueError(f"{field}: {list(value)} contradicts task {task.name!r}, whose label "
                             f"{int(field == 'positive')} is {list(expected)}")
    if tuple(classes) != class_names(task):
        raise ValueError(f"classes: {list(classes)} contradicts task {task.name!r}, whose classes are "
                         f"{list(class_names(task))}")
