"""search.model.routing: class names of a task, the routing decisions of a predicted class, and the class check."""

import pytest

from lungct.records import CATEGORIES, TASKS
from search.model.routing import (
    CLINICAL_NOTE,
    ROUTING,
    check_classes,
    check_grades,
    class_name,
    class_names,
    decision_text,
    decisions,
)

COURSE = TASKS["course"]


@pytest.mark.parametrize("categories, expected", [
    ((), ""), (("CT-0",), "CT-0"), (("CT-2", "CT-3"), "CT-2 or CT-3"),
    (("CT-1", "CT-2", "CT-3", "CT-4"), "CT-1, CT-2, CT-3 or CT-4"),
])
def test_class_name_joins_categories_with_commas_and_a_final_or(categories, expected):
    assert class_name(categories) == expected


def test_class_names_are_label_0_then_label_1():
    assert class_names(COURSE) == ("CT-0", "CT-2 or CT-3")
    assert class_names(TASKS["severe"]) == ("CT-0 or CT-1", "CT-3 or CT-4")


def test_routing_table_routes_every_grade():
    assert list(ROUTING) == list(CATEGORIES) == ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]
    assert all(decision.strip() for decision in ROUTING.values())
    assert "telemedicine" in ROUTING["CT-1"] and "emergency" in ROUTING["CT-4"]


def test_routing_note_says_the_table_weighs_clinical_data_a_ct_lacks():
    assert "SpO2" in CLINICAL_NOTE and "a CT does not carry" in CLINICAL_NOTE


def test_decisions_keep_every_grade_of_a_class_in_its_order():
    assert list(decisions(("CT-3", "CT-1", "CT-2"))) == ["CT-3", "CT-1", "CT-2"]
    assert decisions(("CT-1", "CT-4")) == {"CT-1": ROUTING["CT-1"], "CT-4": ROUTING["CT-4"]}


def test_decision_text_of_one_grade_is_its_decision_alone():
    assert decision_text(("CT-0",)) == ROUTING["CT-0"]
    assert decision_text(("CT-1",)) == ROUTING["CT-1"]


def test_decision_text_of_a_pooled_class_lists_each_grade_decision():
    assert decision_text(("CT-2", "CT-3")) == f"if CT-2: {ROUTING['CT-2']}; if CT-3: {ROUTING['CT-3']}"
    text = decision_text(("CT-1", "CT-3", "CT-4"))
    assert text == f"if CT-1: {ROUTING['CT-1']}; if CT-3: {ROUTING['CT-3']}; if CT-4: {ROUTING['CT-4']}"
    assert "no decision" not in text


def test_check_classes_accepts_the_tasks_own_fields():
    check_classes(COURSE, ("CT-0",), ("CT-2", "CT-3"), ("CT-0", "CT-2 or CT-3"))


def test_check_classes_refuses_an_unknown_category_naming_the_field():
    with pytest.raises(ValueError, match=r"^negative: unknown categories \['CT-9'\]"):
        check_classes(COURSE, ("CT-9",), ("CT-2", "CT-3"), ("CT-0", "CT-2 or CT-3"))


def test_check_classes_refuses_a_positive_class_that_contradicts_the_task():
    with pytest.raises(ValueError, match=r"^positive: \['CT-0'\] contradicts task 'course', whose label 1 is"):
        check_classes(COURSE, ("CT-0",), ("CT-0",), ("CT-0", "CT-2 or CT-3"))


def test_check_classes_refuses_swapped_negative_and_positive():
    with pytest.raises(ValueError, match=r"^negative: .* whose label 0 is \['CT-0'\]"):
        check_classes(COURSE, ("CT-2", "CT-3"), ("CT-0",), ("CT-0", "CT-2 or CT-3"))


def test_check_classes_refuses_class_names_that_contradict_the_task():
    with pytest.raises(ValueError, match=r"^classes: \['CT-2 or CT-3', 'CT-0'\] contradicts task 'course'"):
        check_classes(COURSE, ("CT-0",), ("CT-2", "CT-3"), ("CT-2 or CT-3", "CT-0"))


SEVERITY = TASKS["severity"]
SEVERITY_NAMES = ("CT-0", "CT-1", "CT-2", "CT-3 or CT-4")


def test_class_names_of_an_ordinal_task_name_every_grade_in_order():
    assert class_names(SEVERITY) == SEVERITY_NAMES


def test_decision_text_of_the_pooled_top_severity_grade_lists_ct3_and_ct4():
    top = SEVERITY.grades[-1]
    assert decision_text(top) == f"if CT-3: {ROUTING['CT-3']}; if CT-4: {ROUTING['CT-4']}"


def test_check_grades_accepts_the_tasks_own_grades():
    check_grades(SEVERITY, SEVERITY.grades, SEVERITY_NAMES)


def test_check_grades_refuses_grades_in_another_order():
    with pytest.raises(ValueError, match=r"^grades: .* contradicts task 'severity', whose grades 0...3 are"):
        check_grades(SEVERITY, tuple(reversed(SEVERITY.grades)), SEVERITY_NAMES)


def test_check_grades_refuses_an_unknown_category():
    with pytest.raises(ValueError, match=r"^grades: unknown categories \['CT-5'\]"):
        check_grades(SEVERITY, (("CT-0",), ("CT-1",), ("CT-2",), ("CT-5",)), SEVERITY_NAMES)


def test_check_grades_refuses_grade_names_that_contradict_the_task():
    with pytest.raises(ValueError, match=r"^classes: \['CT-0', 'CT-1', 'CT-2', 'CT-3'\] contradicts task 'severity'"):
        check_grades(SEVERITY, SEVERITY.grades, ("CT-0", "CT-1", "CT-2", "CT-3"))
