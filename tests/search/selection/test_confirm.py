import copy
import dataclasses
import json

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.trial import TrialState
from safetensors.torch import load_file

from lungct.errors import UsageError
from search.selection.confirm import (
    BASELINE_KEY,
    BETTER,
    CHEAPER,
    RULE_RATES,
    SIGNIFICANT,
    Candidate,
    ConfirmFold,
    ConfirmSettings,
    Decision,
    RunResult,
    confirm,
    decide,
    format_decision,
    leader,
    paired_se,
    rule_text,
    select_candidates,
    stored_decision,
)
from search.study import schema
from search.study.recovery import worker_identity
from search.training.loop import FitResult, Tensors
from search.training.unit import Trained, TrainingFailed
from space import ArchSpec, LevelSpec, TrainSpec, baseline, baseline_train, fit_to_size

SIZE = (16, 16, 32)
FOLDS = [(0, 0), (0, 1)]
SECOND = [(1, 0), (1, 1)]


def _spec(width: int) -> ArchSpec:
    return ArchSpec(levels=(LevelSpec(width), LevelSpec(width)), padding="same", head_units=())


def _candidates(n: int, gflops: tuple[float, ...] = ()) -> list[Candidate]:
    """The baseline (5 GFLOPs) and n candidates (1 GFLOP each unless ``gflops`` says)."""
    base, _ = fit_to_size(baseline(), SIZE)
    flops = list(gflops) or [1.0] * n
    return [Candidate(BASELINE_KEY, 0, base, baseline_train(), gflops=5.0, params=1000),
            *[Candidate(f"trial{i}", i, _spec(4 * i), TrainSpec(), gflops=flops[i - 1], params=100)
              for i in range(1, n + 1)]]


def _runs(rng: np.random.Generator, separation: dict[str, float], n_val: int = 60, seed_sd: float = 0.0,
          folds=(*FOLDS, *SECOND)) -> dict:
    """Each model's probabilities = label x separation + its own noise, per fold (same labels for all).

    ``seed_sd`` moves each run's separation by a draw of its own: what another training seed does.
    """
    runs = {}
    for repeat, fold in folds:
        labels = np.repeat([0, 1], n_val // 2)
        for key, sep in separation.items():
            sep = sep + rng.normal(0, seed_sd)
            probs = 1 / (1 + np.exp(-(sep * labels + rng.normal(size=labels.size))))
            auc = float(np.mean(probs[labels == 1][:, None] > probs[labels == 0][None, :]))
            runs[(key, repeat, fold)] = RunResult(key, repeat, fold, auc, tuple(labels.tolist()), tuple(probs.tolist()))
    return runs


def test_confirm_keeps_the_baseline_when_candidates_are_only_noise():
    settings = ConfirmSettings(epochs=1, seed=0, resamples=500)
    candidates = _candidates(3)
    switched = 0
    for seed in range(40):
        runs = _runs(np.random.default_rng(seed), {c.key: 1.5 for c in candidates})
        decision = decide(candidates, runs, FOLDS, settings, SECOND)
        switched += not decision.recommended.baseline
    # Equal models are not ahead and not worse by more than the margin: what ships is no worse, but with
    # 60 scans a fold the bound rarely clears -0.02 (Bonferroni over 3 candidates, seed noise carried).
    assert switched <= 4


def test_confirm_recommends_a_candidate_that_is_clearly_better():
    settings = ConfirmSettings(epochs=1, seed=0, resamples=500)
    candidates = _candidates(3)
    chosen = []
    for seed in range(10):
        runs = _runs(np.random.default_rng(seed), {BASELINE_KEY: 0.5, "trial1": 0.5, "trial2": 3.0, "trial3": 0.5})
        chosen.append(decide(candidates, runs, FOLDS, settings, SECOND).recommended.key)
    assert chosen.count("trial2") >= 9


def test_confirm_decision_states_the_rule_and_each_candidates_numbers():
    candidates = _candidates(2)
    runs = _runs(np.random.default_rng(0), {c.key: 1.0 for c in candidates})
    decision = decide(candidates, runs, FOLDS, ConfirmSettings(epochs=1, seed=0, resamples=200), SECOND)
    assert "Bonferroni" in decision.rule and "-0.02" in decision.rule and decision.recommended.why
    rows = decision.candidates
    assert [r.key for r in rows] == [BASELINE_KEY, "trial1", "trial2"]
    for r in rows[1:]:
        assert r.difference_low <= r.difference
        assert r.confirmed == pytest.approx(np.mean(r.fold_aucs))


def test_confirm_a_diverged_candidate_is_never_recommended():
    candidates = _candidates(1)
    runs = _runs(np.random.default_rng(0), {BASELINE_KEY: 0.5, "trial1": 4.0})
    runs[("trial1", 0, 1)] = RunResult("trial1", 0, 1, float("nan"), (), (), "non-finite training loss")
    decision = decide(candidates, runs, FOLDS, ConfirmSettings(epochs=1, seed=0, resamples=200), SECOND)
    assert decision.recommended.baseline
    assert decision.candidates[1].reason == "non-finite training loss"


def test_confirm_a_leader_without_its_second_look_does_not_replace_the_baseline():
    candidates = _candidates(1)
    runs = _runs(np.random.default_rng(0), {BASELINE_KEY: 0.5, "trial1": 4.0}, folds=FOLDS)
    decision = decide(candidates, runs, FOLDS, ConfirmSettings(epochs=1, seed=0, resamples=200))
    assert decision.recommended.baseline and "no second look" in decision.recommended.why
    assert leader(candidates, runs, FOLDS).key == "trial1"
    one_look = ConfirmSettings(epochs=1, seed=0, resamples=200, second_repeat=False)
    assert decide(candidates, runs, FOLDS, one_look).recommended.key == "trial1"


def test_confirm_leader_is_none_when_no_candidate_is_ahead():
    candidates = _candidates(2)
    runs = _runs(np.random.default_rng(1), {BASELINE_KEY: 3.0, "trial1": 0.5, "trial2": 1.0}, folds=FOLDS)
    assert leader(candidates, runs, FOLDS) is None


def test_confirm_a_truly_better_candidate_with_seed_noise_ships_said_so():
    candidates = _candidates(1)
    settings = ConfirmSettings(epochs=1, seed=0, resamples=300)
    decisions = [decide(candidates, _runs(np.random.default_rng(s), {BASELINE_KEY: 1.0, "trial1": 3.0}, n_val=120,
                                          seed_sd=0.2), FOLDS, settings, SECOND) for s in range(10)]
    assert sum(d.recommended.key == "trial1" for d in decisions) >= 9
    shipped = next(d for d in decisions if d.recommended.key == "trial1")
    assert shipped.recommended.verdict == SIGNIFICANT and "significantly better" in shipped.recommended.why
    assert "100 parameters against the baseline's 1,000, 1.00 GFLOPs per scan against 5.00 (0.20x)" in \
        shipped.recommended.why


def test_confirm_a_truly_equal_and_cheaper_candidate_ships_as_good_and_cheaper():
    # Many scans and no seed noise: a bound tight enough to rule out a loss of 0.02. The baseline costs 5 GFLOPs.
    candidates = _candidates(1, gflops=(1.0,))
    settings = ConfirmSettings(epochs=1, seed=0, resamples=300, seed_sd=0.0)
    verdicts = []
    for s in range(6):
        decision = decide(candidates, _runs(np.random.default_rng(s), {BASELINE_KEY: 2.0, "trial1": 2.0},
                                            n_val=2000), FOLDS, settings, SECOND)
        verdicts.append(decision.candidates[1].verdict)
        if decision.recommended.verdict == CHEAPER:
            assert "as good as the seed baseline and cheaper" in decision.recommended.why
            assert "GFLOPs per scan against 5.00" in decision.recommended.why
    assert verdicts.count(None) <= 3 and set(verdicts) <= {None, CHEAPER, BETTER, SIGNIFICANT}
    assert CHEAPER in verdicts


def test_confirm_a_truly_equal_but_costlier_candidate_ships_only_when_ahead():
    candidates = _candidates(1, gflops=(9.0,))
    settings = ConfirmSettings(epochs=1, seed=0, resamples=300, seed_sd=0.0)
    for s in range(6):
        decision = decide(candidates, _runs(np.random.default_rng(s), {BASELINE_KEY: 2.0, "trial1": 2.0},
                                            n_val=2000), FOLDS, settings, SECOND)
        row = decision.candidates[1]
        assert row.verdict != CHEAPER
        assert decision.recommended.baseline == (row.difference <= 0 or row.verdict is None)


def test_confirm_a_truly_worse_candidate_with_seed_noise_never_ships():
    candidates = _candidates(2)
    settings = ConfirmSettings(epochs=1, seed=0, resamples=300)
    shipped = sum(not decide(candidates, _runs(np.random.default_rng(s), {BASELINE_KEY: 1.5, "trial1": 1.1,
                                                                          "trial2": 1.1}, seed_sd=0.3),
                             FOLDS, settings, SECOND).recommended.baseline for s in range(40))
    assert shipped <= 1


def test_confirm_paired_se_carries_the_seed_noise_and_grows_when_runs_disagree():
    quiet = _runs(np.random.default_rng(0), {BASELINE_KEY: 1.0, "trial1": 1.5})
    pairs = [*FOLDS, *SECOND]
    # The same scans' scores, but the candidate's run AUCs swing by +-0.25 from run to run: seed noise that
    # the scans' bootstrap cannot see.
    loud = dict(quiet)
    for i, (r, f) in enumerate(pairs):
        run = quiet[("trial1", r, f)]
        loud[("trial1", r, f)] = dataclasses.replace(run, auc=run.auc + (0.25 if i % 2 else -0.25))

    def se(runs, **kw):
        return paired_se([runs[("trial1", r, f)] for r, f in pairs], [runs[(BASELINE_KEY, r, f)] for r, f in pairs],
                         ConfirmSettings(epochs=1, seed=0, resamples=300, **kw))

    scan_only = se(quiet, seed_sd=0.0)
    assert se(quiet) == pytest.approx(np.sqrt(scan_only ** 2 + 2 * 0.031 ** 2 / 4), rel=0.05)
    assert se(loud, seed_sd=0.0) > 1.5 * scan_only  # the runs' own spread says the seeds matter


def test_confirm_decision_explains_on_the_leader_that_had_the_second_look():
    # trial1 leads on the first repeat and gets the second look, where it falls back; trial2, with no second look,
    # is then further ahead over all its runs: the reason must still speak of trial1 (a recorded random-search case).
    settings = ConfirmSettings(epochs=1, seed=0, resamples=300)
    rng = np.random.default_rng(3)
    runs = {**_runs(rng, {BASELINE_KEY: 1.5, "trial1": 2.5, "trial2": 1.9}, folds=FOLDS),
            **_runs(rng, {BASELINE_KEY: 1.5, "trial1": 0.5}, folds=SECOND)}
    decision = decide(_candidates(2), runs, FOLDS, settings, SECOND)
    rows = {r.key: r for r in decision.candidates}
    assert rows["trial2"].difference > rows["trial1"].difference  # trial2 is ahead over all runs
    assert decision.recommended.baseline and "trial1" in decision.recommended.why
    assert "no second look yet" not in decision.recommended.why


def test_confirm_rule_text_states_the_measured_rates_only_for_the_default_rule():
    assert RULE_RATES in rule_text(ConfirmSettings(epochs=12, seed=0, folds=3), 2)
    assert RULE_RATES not in rule_text(ConfirmSettings(epochs=12, seed=0, folds=3, margin=0.05), 2)
    assert RULE_RATES not in rule_text(ConfirmSettings(epochs=12, seed=0, folds=3), 3)


def _search_study(specs: list[tuple[float, ArchSpec]], rates: tuple[float, ...] = ()) -> optuna.Study:
    """The baseline's trial (``rates[0]`` samples/s when given), then one trial per spec (``rates[i]``)."""
    study = optuna.create_study(direction="maximize")
    base, _ = fit_to_size(baseline(), SIZE)
    speed = [{schema.SAMPLES_PER_S: r} for r in rates] or [{}] * (len(specs) + 1)
    study.add_trial(optuna.trial.create_trial(value=0.6, user_attrs={"baseline": True, "spec": base.to_dict(),
                                                                      "train_spec": baseline_train().to_dict(),
                                                                      **speed[0]}))
    for (value, spec), extra in zip(specs, speed[1:], strict=True):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={
            "spec": spec.to_dict(), "train_spec": TrainSpec().to_dict(), "score_se": 0.05, **extra}))
    return study


def test_confirm_candidates_are_the_baseline_then_the_best_distinct_specs():
    study = _search_study([(0.9, _spec(8)), (0.95, _spec(8)), (0.7, _spec(16)), (0.8, _spec(4))])
    candidates = select_candidates(study, SIZE, top_k=2)
    assert [c.key for c in candidates] == [BASELINE_KEY, "trial2", "trial4"]  # trial1 repeats trial2's spec
    assert candidates[1].search_score == 0.95 and candidates[1].search_se == 0.05


def test_confirm_candidates_differ_in_their_trunk_not_only_in_head_or_dropout():
    near_copy = dataclasses.replace(_spec(8), head_units=(64,), dropout=0.1)
    study = _search_study([(0.9, _spec(8)), (0.88, near_copy), (0.7, _spec(16))])
    candidates = select_candidates(study, SIZE, top_k=2)
    # trial2 only changes trial1's head and dropout: the second slot goes to the next trunk, trial3.
    assert [c.key for c in candidates] == [BASELINE_KEY, "trial1", "trial3"]


def test_confirm_candidates_skip_a_trunk_slower_than_the_speed_limit_and_take_the_next():
    # The baseline trains at 20 samples/s; trial1 (the best) at 4, 5x slower; trial2 at 25, trial3 at 10 (2x).
    study = _search_study([(0.95, _spec(8)), (0.9, _spec(16)), (0.8, _spec(4))], rates=(20.0, 4.0, 25.0, 10.0))
    assert [c.key for c in select_candidates(study, SIZE, top_k=2)] == [BASELINE_KEY, "trial1", "trial2"]
    left_out: list = []
    limited = select_candidates(study, SIZE, top_k=2, speed_limit=1.0, left_out=left_out)
    assert [c.key for c in limited] == [BASELINE_KEY, "trial2"]  # trial3 is 2x slower too
    assert [(t.trial, t.times_slower) for t in left_out] == [(1, 5.0), (3, 2.0)]
    assert "5.0x slower" in left_out[0].line(1.0) and "--trial 1" in left_out[0].line(1.0)
    assert [c.key for c in select_candidates(study, SIZE, top_k=2, speed_limit=2.0)] == [
        BASELINE_KEY, "trial2", "trial3"]


def test_confirm_candidates_without_recorded_speeds_are_never_left_out():
    study = _search_study([(0.95, _spec(8)), (0.9, _spec(16))])  # an older study: no samples_per_s
    assert [c.key for c in select_candidates(study, SIZE, top_k=2, speed_limit=1.0)] == [
        BASELINE_KEY, "trial1", "trial2"]


class _Scaled(torch.nn.Module):
    """A 'trained' model: logit = scale x mean voxel value."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * x.mean(dim=(1, 2, 3, 4))


def _folds() -> list[ConfirmFold]:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0.0, 1.0] * 6)
    volumes = (torch.rand(12, 1, 4, 4, 4, generator=g) + labels.view(-1, 1, 1, 1, 1)).half()
    data = Tensors(volumes, labels)
    return [ConfirmFold(0, f, data, data) for f in range(2)]


def test_confirm_stores_its_decision_and_resumes_without_retraining():
    study = _search_study([(0.9, _spec(8)), (0.8, _spec(4))])
    storage = study._storage
    calls = []

    def fake_train(spec, train, data, val, **kwargs):
        calls.append(spec.levels[0].filters)
        return Trained(_Scaled(1.0), FitResult())

    settings = ConfirmSettings(epochs=1, seed=0, top_k=2, resamples=200)
    decision = confirm(study, storage, _folds(), settings, SIZE, torch.device("cpu"), train_fn=fake_train,
                       progress=False)
    assert len(calls) == 6  # 3 candidates x 2 folds
    assert study.user_attrs["confirmation"] == decision.to_dict()
    assert decision.recommended.baseline  # identical models: nothing beats the baseline
    again = confirm(study, storage, _folds(), settings, SIZE, torch.device("cpu"), train_fn=fake_train,
                    progress=False)
    assert len(calls) == 6 and again.recommended == decision.recommended


class _Shuffled(torch.nn.Module):
    """A 'trained' model that has learnt nothing: a fixed logit per scan, unrelated to its label."""

    def forward(self, x):
        return torch.sin(1000.0 * x.sum(dim=(1, 2, 3, 4)))


def test_confirm_gives_the_leader_a_second_look_and_ships_it():
    study = _search_study([(0.9, _spec(8)), (0.8, _spec(4))])
    calls = []

    def train(spec, train, data, val, **kwargs):
        calls.append(spec.levels[0].filters)
        return Trained(_Scaled(1.0) if spec.levels[0].filters == 8 else _Shuffled(), FitResult())

    made = []

    def second_folds():
        made.append(1)
        return [dataclasses.replace(f, repeat=1) for f in _folds()]

    settings = ConfirmSettings(epochs=1, seed=0, top_k=2, resamples=200)
    decision = confirm(study, study._storage, _folds(), settings, SIZE, torch.device("cpu"), train_fn=train,
                       progress=False, second_folds=second_folds)
    assert made == [1] and len(calls) == 6 + 4  # 3 candidates x 2 folds, then the leader and the baseline x 2
    assert decision.recommended.key == "trial1" and decision.recommended.verdict == SIGNIFICANT
    assert decision.folds == ((0, 0), (0, 1), (1, 0), (1, 1))
    assert len(decision.candidate("trial1").fold_aucs) == 4 and len(decision.candidate("trial2").fold_aucs) == 2


def test_confirm_refuses_while_another_live_process_runs_the_studys_confirmation():
    study = _search_study([(0.9, _spec(8))])
    settings = ConfirmSettings(epochs=1, seed=0, top_k=1, resamples=200)
    companion = optuna.create_study(study_name=settings.study_name(study.study_name), storage=study._storage,
                                    direction="maximize")
    running = companion.ask()  # a run of another, live process (this one's identity: alive)
    running.set_user_attr(schema.WORKER, worker_identity())
    calls = []
    with pytest.raises(UsageError, match="is running its confirmation now"):
        confirm(study, study._storage, _folds(), settings, SIZE, torch.device("cpu"),
                train_fn=lambda *a, **k: calls.append(1) or Trained(_Scaled(1.0), FitResult()), progress=False)
    assert calls == [] and "confirmation" not in study.user_attrs


def test_confirm_calls_its_callbacks_after_each_finished_run():
    study = _search_study([(0.9, _spec(8))])
    finished = []
    settings = ConfirmSettings(epochs=1, seed=0, top_k=1, resamples=200)
    confirm(study, study._storage, _folds(), settings, SIZE, torch.device("cpu"),
            train_fn=lambda *a, **k: Trained(_Scaled(1.0), FitResult()), progress=False,
            callbacks=[lambda companion, trial: finished.append((companion.study_name, trial.state.name))])
    assert len(finished) == 4  # 2 candidates (one and the baseline) x 2 folds, each once it has finished
    assert {state for _, state in finished} == {"COMPLETE"} and len({name for name, _ in finished}) == 1


def test_confirm_ctrl_c_fails_the_running_run_and_a_rerun_finishes_it():
    study = _search_study([(0.9, _spec(8))])
    storage = study._storage
    calls = []

    def interrupted_once(spec, train, data, val, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return Trained(_Scaled(1.0), FitResult())

    settings = ConfirmSettings(epochs=1, seed=0, top_k=1, resamples=200)
    with pytest.raises(KeyboardInterrupt):
        confirm(study, storage, _folds(), settings, SIZE, torch.device("cpu"), train_fn=interrupted_once,
                progress=False)
    companion = optuna.load_study(study_name=settings.study_name(study.study_name), storage=storage)
    assert not [t for t in companion.trials if t.state == TrialState.RUNNING]
    assert "confirmation" not in study.user_attrs
    confirm(study, storage, _folds(), settings, SIZE, torch.device("cpu"), train_fn=interrupted_once, progress=False)
    assert len(calls) == 2 + 3  # the interrupted run and the two never started


def test_confirm_a_diverging_run_is_recorded_not_retried():
    study = _search_study([(0.9, _spec(8))])

    def diverging(spec, train, data, val, **kwargs):
        if spec.levels[0].filters == 8:
            raise TrainingFailed("non_finite", "non-finite training loss (nan) at epoch 1, step 1")
        return Trained(_Scaled(1.0), FitResult())

    settings = ConfirmSettings(epochs=1, seed=0, top_k=1, resamples=200)
    decision = confirm(study, study._storage, _folds(), settings, SIZE, torch.device("cpu"), train_fn=diverging,
                       progress=False)
    assert decision.recommended.baseline
    assert decision.candidates[1].reason.startswith("non-finite training loss")


class _LaggingNorm(torch.nn.Module):
    """A 'trained' model with batch norm whose running statistics are far from its data's."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm3d(1)
        with torch.no_grad():
            self.norm.running_mean.fill_(100.0)

    def forward(self, x):
        return self.norm(x).mean(dim=(1, 2, 3, 4))


def test_confirm_recomputes_batch_norm_before_scoring_and_keeps_each_runs_weights(tmp_path):
    study = _search_study([(0.9, _spec(8))])
    settings = ConfirmSettings(epochs=1, seed=0, top_k=1, resamples=200)
    folds = _folds()
    decision = confirm(study, study._storage, folds, settings, SIZE, torch.device("cpu"),
                       train_fn=lambda *a, **k: Trained(_LaggingNorm(), FitResult()), progress=False,
                       artifacts=tmp_path)
    store = FileSystemArtifactStore(str(tmp_path))
    companion = optuna.load_study(study_name=settings.study_name(study.study_name), storage=study._storage)
    for row in decision.candidates:
        assert len(row.members) == len(folds)
        for artifact in row.members:
            path = tmp_path / f"{artifact}.safetensors"
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact)
            kept = load_file(str(path))
            data = folds[0].train.volumes.float()
            # The stored statistics are the training scans' (mean about 0.75 here), not the stale 100.
            assert kept["norm.running_mean"].item() == pytest.approx(float(data.mean()), abs=1e-3)
    assert all(t.user_attrs[schema.BN_RECOMPUTED] for t in companion.trials)
    assert decision.recommended.members == decision.candidates[0].members  # the baseline stays


def test_confirm_without_an_artifact_folder_keeps_no_weights():
    study = _search_study([(0.9, _spec(8))])
    settings = ConfirmSettings(epochs=1, seed=0, top_k=1, resamples=200)
    decision = confirm(study, study._storage, _folds(), settings, SIZE, torch.device("cpu"),
                       train_fn=lambda *a, **k: Trained(_Scaled(1.0), FitResult()), progress=False)
    assert decision.recommended.members is None


# A decision as search.selection.confirm stores it (the study's "confirmation" user attr), field for field.
STORED_DECISION = {
    "rule": "recommend the best-confirmed candidate whose paired AUC difference to the seed baseline has a one-sided "
            "95.0% lower bound above 0 (alpha 0.05 over 1 candidates, Bonferroni); else the seed baseline",
    "settings": {"epochs": 2, "seed": 0, "folds": 2, "repeats": 1, "fold_seed": 1, "top_k": 1, "alpha": 0.05,
                 "resamples": 200, "margin": 0.02, "seed_sd": 0.031, "second_repeat": True},
    "folds": [[0, 0], [0, 1]],
    "candidates": [
        {"key": "baseline", "trial": 0, "baseline": True, "spec": {"padding": "valid"}, "train_spec": {"lr": 1e-4},
         "search_score": 0.6, "search_se": None, "fold_aucs": [0.7, 0.8], "confirmed": 0.75,
         "members": ["a0", "a1"], "difference": None, "difference_low": None, "beats_baseline": False,
         "reason": None, "se": None, "verdict": None, "gflops": 5.4, "params": 1351873},
        {"key": "trial1", "trial": 1, "baseline": False, "spec": {"padding": "same"}, "train_spec": {"lr": 1e-3},
         "search_score": 0.9, "search_se": 0.05, "fold_aucs": [0.9, None], "confirmed": None, "members": None,
         "difference": None, "difference_low": None, "beats_baseline": False,
         "reason": "non-finite training loss (nan) at epoch 1, step 1", "se": None, "verdict": None,
         "gflops": 0.5, "params": 1000},
    ],
    "recommended": {"key": "baseline", "trial": 0, "baseline": True, "confirmed": 0.75,
                    "spec": {"padding": "valid"}, "train_spec": {"lr": 1e-4}, "members": ["a0", "a1"],
                    "why": "no candidate beats the seed baseline", "verdict": None},
    "companion_study": "lungct:confirm2-k2r1-e2-s0-f1",
}


def test_confirm_decision_as_stored_round_trips():
    decision = Decision.from_dict(json.loads(json.dumps(STORED_DECISION)))
    assert decision.recommended.members == ("a0", "a1") and decision.candidates[1].fold_aucs == (0.9, None)
    assert decision.settings == ConfirmSettings(epochs=2, seed=0, top_k=1, resamples=200)
    assert decision.candidates[0].gflops == 5.4
    assert decision.to_dict() == STORED_DECISION
    assert json.loads(json.dumps(decision.to_dict())) == STORED_DECISION


def test_confirm_decision_with_a_trunk_left_out_for_its_speed_round_trips_and_says_so():
    stored = {**copy.deepcopy(STORED_DECISION), "left_out": [7]}
    stored["settings"]["speed_limit"] = 1.0
    decision = Decision.from_dict(json.loads(json.dumps(stored)))
    assert decision.left_out == (7,) and decision.settings.speed_limit == 1.0
    assert decision.to_dict() == stored
    assert "left out for their training speed (--budget): trial 7" in format_decision(decision)


def test_confirm_decision_stored_before_fold_models_were_kept_loads():
    old = copy.deepcopy(STORED_DECISION)  # what the confirmation stored before it kept each run's weights
    for row in (*old["candidates"], old["recommended"]):
        del row["members"]
    decision = Decision.from_dict(old)
    assert decision.recommended.members is None and all(r.members is None for r in decision.candidates)
    assert decision.recommended.key == "baseline" and decision.companion_study == old["companion_study"]


def test_confirm_decision_stored_before_the_margin_rule_reads_as_the_rule_it_ran():
    old = copy.deepcopy(STORED_DECISION)
    for key in ("margin", "seed_sd", "second_repeat"):
        del old["settings"][key]
    for row in (*old["candidates"], old["recommended"]):
        for key in ("se", "verdict", "gflops", "params"):
            row.pop(key, None)
    decision = Decision.from_dict(old)
    s = decision.settings
    assert (s.margin, s.seed_sd, s.second_repeat) == (0.0, 0.0, False)
    assert decision.candidates[0].gflops is None and decision.recommended.verdict is None
    assert "2-fold x 1 on fresh folds" in format_decision(decision)


def test_confirm_decision_without_a_companion_study_stores_none():
    d = {k: v for k, v in STORED_DECISION.items() if k != "companion_study"}
    decision = Decision.from_dict(d)
    assert decision.companion_study is None and decision.to_dict() == d


def test_confirm_format_decision_reads_the_record_and_a_stored_dict_alike():
    text = format_decision(Decision.from_dict(STORED_DECISION))
    assert text == format_decision(STORED_DECISION)
    assert "2-fold x 1 (+ a second repeat for the leader) on fresh folds, 2 epochs" in text and "failed" in text
    assert text.endswith("recommended: baseline (no candidate beats the seed baseline)")


def test_confirm_stored_decision_is_none_before_a_confirmation():
    study = optuna.create_study()
    assert stored_decision(study) is None
    study.set_user_attr(schema.STUDY_CONFIRMATION, STORED_DECISION)
    assert stored_decision(study) == Decision.from_dict(STORED_DECISION)


def _graded_runs(rng: np.random.Generator, separation: dict[str, float], n_val: int = 60) -> dict:
    """Ordinal runs: each model's stored score = grade x separation + noise, 4 grades, the same grades for all."""
    runs = {}
    for repeat, fold in (*FOLDS, *SECOND):
        labels = np.repeat([0, 1, 2, 3], n_val // 4)
        for key, sep in separation.items():
            score = sep * labels + rng.normal(size=labels.size)
            auc = float(np.mean([np.mean(score[labels >= k][:, None] > score[labels < k][None, :]) for k in (1, 2, 3)]))
            runs[(key, repeat, fold)] = RunResult(key, repeat, fold, auc, tuple(labels.tolist()), tuple(score.tolist()))
    return runs


def test_confirm_on_grades_keeps_the_baseline_on_noise_and_takes_a_clearly_better_candidate():
    settings = ConfirmSettings(epochs=1, seed=0, resamples=500)
    candidates = _candidates(2)
    switched = sum(not decide(candidates, _graded_runs(np.random.default_rng(s), {c.key: 0.8 for c in candidates}),
                              FOLDS, settings, SECOND).recommended.baseline for s in range(30))
    assert switched <= 3
    chosen = [decide(candidates, _graded_runs(np.random.default_rng(s), {BASELINE_KEY: 0.3, "trial1": 0.3,
                                                                         "trial2": 2.0}), FOLDS, settings, SECOND)
              .recommended.key for s in range(10)]
    assert chosen.count("trial2") >= 9
