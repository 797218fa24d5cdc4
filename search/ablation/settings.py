"""What an ablation runs with: the settings every run shares, and what one invocation asks for.

:class:`AblationSettings` is stored on the ablation's study and names it, so other settings make another
study; :class:`AblationJob` says which variants to run and where things are read and written, none of
which changes what a run computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from search.selection.settings import NOT_STORED, DataSettings, settings_dict

SETTINGS_ATTR = "settings"  # the study user attr that holds AblationSettings.to_dict()


@dataclass(frozen=True, kw_only=True)
class AblationSettings(DataSettings):
    """What every run of an ablation shares; it names the study, with the fingerprint of the scans it folds.

    The data settings (:class:`search.selection.settings.DataSettings`) are those of ``search.run`` and export: the
    same flags find the same scans. ``split_seed`` picks the train/val/test split whose test part stays
    locked (the search study's, with --study); the fingerprint of the train+val scans already tells one
    split from another.
    """

    epochs: int
    folds: int
    repeats: int
    seed: int
    amp: bool = field(default=False, metadata=NOT_STORED)  # the device's precision, not a setting of the study

    def study_name(self, data_fingerprint: str) -> str:
        """``ablation-<fingerprint>-<task>-<DxHxW>-e<E>-k<K>r<R>-s<seed>``: other settings, another study."""
        return (f"ablation-{data_fingerprint}-{self.task}-{'x'.join(map(str, self.size))}-e{self.epochs}"
                f"-k{self.folds}r{self.repeats}-s{self.seed}")

    def to_dict(self) -> dict:
        """JSON-ready dict: the stored fields (``amp`` is not one)."""
        return settings_dict(self)


@dataclass(frozen=True)
class AblationJob:
    """What one invocation asks for beyond the shared settings: which variants, and where to read and write.

    Attributes:
        variants: Variant names in the course's order, the baseline first (``variants.parse_variants``).
        baseline_added: Whether the baseline was added because the list lacked it (said on the console).
        study: A search study whose recommended (else best) trial also runs, as ``study_best``; None: none.
        study_storage: The storage of ``study`` (None: ``sqlite:///<studies_dir>/<study>.db``).
        storage: Where the runs are stored (None: ``sqlite:///<studies_dir>/ablation.db``).
        out: Where ablation.csv, runs.csv and ablation.html go (None: ``<studies_dir>/ablation``).
        studies_dir: Where studies, caches, splits and outputs are written.
        workers: Processes decoding scans on a cold cache (None: all cores).
    """

    variants: tuple[str, ...]
    baseline_added: bool = False
    study: str | None = None
    study_storage: str | None = None
    storage: str | None = None
    out: str | None = None
    studies_dir: str = "studies"
    workers: int | None = None
