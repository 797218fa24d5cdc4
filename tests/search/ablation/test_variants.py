"""search.ablation.variants: parsing --variants, fitting each variant to the input size, its key, the study's best."""

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.ablation.variants import (
    BASELINE,
    STUDY_BEST,
    StudyBest,
    load_study_best,
    make_variants,
    padding_lines,
    parse_variants,
    training_text,
)
from search.study import schema
from space import ArchSpec, LevelSpec, TrainSpec, baseline_train, check_input_size, variants

SIZE = (16, 24, 20)
COURSE_ORDER = list(variants())
SMALL = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))


def test_parse_variants_all_is_every_variant_in_the_courses_order():
    assert parse_variants("all") == (COURSE_ORDER, False)
    assert COURSE_ORDER[0] == BASELINE


def test_parse_variants_puts_a_list_in_the_courses_order_and_adds_the_baseline():
    names, added = parse_variants(" residual , sigmoid,")
    assert names == [BASELINE, "sigmoid", "residual"] and added


def test_parse_variants_with_the_baseline_says_it_added_nothing():
    assert parse_variants("avgpool,baseline") == ([BASELINE, "avgpool"], False)


def test_parse_variants_refuses_an_unknown_name_suggesting_the_nearest():
    with pytest.raises(ValueError, match=r"^--variants: unknown variant 'residul'; did you mean 'residual'\?"):
        parse_variants("residul")


def test_parse_variants_says_study_best_comes_from_study():
    with pytest.raises(ValueError, match=rf"^--variants: {STUDY_BEST} is added by --study NAME"):
        parse_variants(f"baseline,{STUDY_BEST}")


@pytest.mark.parametrize("text", ["", " , "])
def test_parse_variants_refuses_an_empty_list(text):
    with pytest.raises(ValueError, match=r"^--variants: expected all or a list of baseline, "):
        parse_variants(text)


def test_make_variants_fits_each_to_the_size_with_the_seeds_training_and_names_its_origin():
    made = make_variants(["baseline", "residual"], SIZE)
    assert [v.name for v in made] == ["baseline", "residual"]
    for v in made:
        check_input_size(v.spec, SIZE)  # raises if the fitted spec cannot run
        assert v.train_spec == baseline_train()
        assert v.padding_note and v.spec.padding == "same"  # 16x24x20 is too small for the seed's 'valid'
    assert [v.origin for v in made] == ["the seed model", "the seed with residual"]


def test_make_variants_appends_the_study_best_with_its_own_training():
    own = TrainSpec(lr=0.003, batch_size=4)
    made = make_variants(["baseline"], SIZE, StudyBest(SMALL, own, "best trial (3) of study 's'", 7))
    best = made[-1]
    assert [v.name for v in made] == ["baseline", STUDY_BEST]
    assert best.spec == SMALL and best.train_spec == own and best.origin == "best trial (3) of study 's'"
    assert best.padding_note is None


def test_make_variants_refuses_a_size_too_small_naming_the_variant_and_the_size():
    with pytest.raises(ValueError, match=r"^--size: variant baseline cannot run at 2x3x2 voxels: "):
        make_variants(["baseline"], (2, 3, 2))


def test_variant_key_is_a_short_hash_of_spec_and_training():
    (a,) = make_variants(["baseline"], SIZE)
    (b,) = make_variants(["baseline"], SIZE)
    best = make_variants([], SIZE, StudyBest(a.spec, TrainSpec(lr=0.01), "x", None))[0]
    assert a.key == b.key and len(a.key) == 12 and int(a.key, 16) >= 0
    assert best.key != a.key  # same spec, other training: another run


def test_variant_key_differs_between_variants():
    keys = [v.key for v in make_variants(COURSE_ORDER, SIZE)]
    assert len(set(keys)) == len(keys)


def test_variant_padding_says_when_it_differs_from_the_seeds():
    large = (64, 96, 80)  # the seed's 'valid' fits here for all but double_conv
    by_name = {v.name: v for v in make_variants(["baseline", "double_conv"], large)}
    assert by_name["baseline"].padding == "valid" and by_name["baseline"].padding_note is None
    assert by_name["double_conv"].padding == "same (the seed's is valid)"


def test_padding_lines_group_the_variants_sharing_a_reason():
    made = make_variants(["baseline", "sigmoid", "double_conv"], SIZE)
    lines = padding_lines(made)
    notes = {v.name: v.padding_note for v in made}
    assert notes["baseline"] == notes["sigmoid"] != notes["double_conv"]
    assert lines == [f"padding: baseline, sigmoid use {notes['baseline']}",
                     f"padding: double_conv use {notes['double_conv']}"]
    assert padding_lines(make_variants(["baseline"], (64, 96, 80))) == []


def test_training_text_names_optimiser_lr_weight_decay_and_batch():
    assert training_text(TrainSpec(lr=0.0001, weight_decay=0.0, optimizer="adam", batch_size=2)) == \
        "adam lr 0.0001, weight decay 0, batch 2"


# --- load_study_best, without a confirmation ------------------------------------------------------------------

def _storage(tmp_path, *trials, settings=None):
    tmp_path.mkdir(exist_ok=True)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    if settings is not None:
        study.set_user_attr(schema.STUDY_SETTINGS, settings)
    for t in trials:
        study.add_trial(t)
    return url


OWN_TRAINING = TrainSpec(lr=0.002)


def _trial(value, spec=SMALL):
    return create_trial(value=value, user_attrs={schema.SPEC: spec if isinstance(spec, dict) else spec.to_dict(),
                                                 schema.TRAIN_SPEC: OWN_TRAINING.to_dict(), schema.PARAMS: 10})


def test_load_study_best_takes_the_best_complete_trial_with_a_spec_and_the_split_seed(tmp_path):
    other = ArchSpec(levels=(LevelSpec(8), LevelSpec(16)), padding="same")
    url = _storage(tmp_path, _trial(0.7, other), _trial(0.8), create_trial(value=0.95),
                   create_trial(state=TrialState.PRUNED), settings={"split_seed": 4, "seed": 9})
    best = load_study_best("s", url)
    assert best.spec == SMALL and best.train_spec == OWN_TRAINING
    assert best.origin == "best trial (1) of study 's', search CV AUC 0.800" and best.split_seed == 4


def test_load_study_best_falls_back_to_the_seed_setting_then_none(tmp_path):
    assert load_study_best("s", _storage(tmp_path / "a", _trial(0.8), settings={"seed": 9})).split_seed == 9
    assert load_study_best("s", _storage(tmp_path / "b", _trial(0.8))).split_seed is None


def test_load_study_best_refuses_a_study_without_a_complete_trial(tmp_path):
    url = _storage(tmp_path, create_trial(state=TrialState.PRUNED), create_trial(value=0.9))  # the last: no spec
    with pytest.raises(ValueError, match=r"^--study: study 's' has no complete trial yet"):
        load_study_best("s", url)


def test_load_study_best_refuses_a_stored_spec_that_does_not_parse_naming_the_trial(tmp_path):
    url = _storage(tmp_path, _trial(0.8, {"levels": "nonsense"}))
    with pytest.raises(ValueError, match=r"^--study: trial 0 of study 's' holds a spec that does not parse: "):
        load_study_best("s", url)


def test_load_study_best_of_a_severity_study_gives_its_task_and_names_its_score(tmp_path):
    best = load_study_best("s", _storage(tmp_path, _trial(0.8), settings={"task": "severity", "split_seed": 1}))
    assert best.task == "severity" and best.origin == "best trial (0) of study 's', search CV grade>=k AUC 0.800"


def test_load_study_best_takes_a_study_that_stored_no_task_for_the_course_task_it_ran(tmp_path):
    assert load_study_best("s", _storage(tmp_path / "a", _trial(0.8), settings={"seed": 9})).task == "course"
    assert load_study_best("s", _storage(tmp_path / "b", _trial(0.8))).task is None  # no settings: nothing known
