"""The course's severity routing table, and what it says for a class a model predicts.

The course pairs each CT severity grade (CT-0 to CT-4) with a routing decision; the table routes all
five. A binary model predicts a class that pools grades (the course task's positive class is CT-2 or
CT-3, which it cannot tell apart), so the decision for a class lists the decision of every grade in it;
so does the severity task's top grade, which pools CT-3 with CT-4. The table also weighs clinical data
beside each grade (temperature, respiratory rate, SpO2, PaO2/FiO2), which a CT does not carry
(:data:`CLINICAL_NOTE`): every output that gives a decision says so. A model folder's task, categories
and class names are checked against each other (:func:`check_classes` for a binary task,
:func:`check_grades` for an ordinal one) before a decision is drawn from them.
"""

from __future__ import annotations

from lungct.records import CATEGORIES, Task

DISCLAIMER = ("Research use only: not a medical device; do not use these outputs for diagnosis or for "
              "routing real patients.")

ROUTING = {
    "CT-0": "not consistent with pneumonia (COVID-19 included): inform the attending physician; refer to a specialist",
    "CT-1": "follow-up at home with telemedicine (mandatory telemonitoring)",
    "CT-2": "follow-up at home by a primary care physician",
    "CT-3": "immediate admission to a COVID-specialised hospital; in hospital, immediate transfer to intensive care",
    "CT-4": "emergency medical care; immediate admission to a specialised hospital; in hospital, transfer to "
            "intensive care",
}
CLINICAL_NOTE = ("The course's routing table also weighs clinical data beside each grade (temperature, respiratory "
                 "rate, SpO2, PaO2/FiO2), which a CT does not carry: the decision shown is the CT's part of it.")


def class_name(categories: tuple[str, ...]) -> str:
    """``CT-0``, ``CT-2 or CT-3``, ``CT-1, CT-2, CT-3 or CT-4``."""
    if len(categories) <= 1:
        return "".join(categories)
    return f"{', '.join(categories[:-1])} or {categories[-1]}"


def class_names(task: Task) -> tuple[str, ...]:
    """The names of label 0 and label 1 under a binary task; of grades 0..K-1 under an ordinal one.

    A binary task's two grades are its negative and positive categories, so both read the same way.
    """
    return tuple(class_name(grade) for grade in task.grades)


def decisions(categories: tuple[str, ...]) -> dict[str, str]:
    """Grade -> routing decision, for each grade of a class, in the class's order."""
    return {c: ROUTING[c] for c in categories}


def decision_text(categories: tuple[str, ...]) -> str:
    """One line: the table's decision for a predicted class, or each pooled grade's (``if CT-2: ...; if CT-3: ...``)."""
    if len(categories) == 1:
        return ROUTING[categories[0]]
    return "; ".join(f"if {c}: {d}" for c, d in decisions(categories).items())


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


def check_grades(task: Task, grades: tuple[tuple[str, ...], ...], classes: tuple[str, ...]) -> None:
    """Refuse an ordinal folder's grades or grade names that contradict the task they claim.

    The grades are ordered, so a folder that listed them in another order (or moved CT-4 into CT-0's
    grade) would route a severe scan as a normal one under names that look right: the categories of
    every grade, in order, and every grade's name must be the task's own.

    Raises:
        ValueError: A field contradicts the task (the message starts with the field's name).
    """
    unknown = [c for grade in grades for c in grade if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"grades: unknown categories {unknown} (categories are {', '.join(CATEGORIES)})")
    if tuple(tuple(g) for g in grades) != task.grades:
        raise ValueError(f"grades: {[list(g) for g in grades]} contradicts task {task.name!r}, whose grades 0..."
                         f"{task.n_grades - 1} are {[list(g) for g in task.grades]}")
    if tuple(classes) != class_names(task):
        raise ValueError(f"classes: {list(classes)} contradicts task {task.name!r}, whose grades are "
                         f"{list(class_names(task))}")
