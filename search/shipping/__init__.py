"""What export trains, measures and writes: the retrained models, the locked-test metrics, the card, the figures.

``models`` chooses and retrains what ships (and the baseline beside it); ``metrics`` scores both on the
locked test part and assembles metrics.json; ``figures`` draws ROC, calibration and saliency pictures;
``model_card`` writes MODEL_CARD.md; ``bundle`` the MONAI bundle; ``writing`` writes the model folder
(``search.model``) whole or not at all; ``dashboard`` leaves the export on the study for optuna-dashboard.
``export`` puts them together: what ``python -m search.export`` calls.
"""
