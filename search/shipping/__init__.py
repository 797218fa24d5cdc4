"""What export trains, measures and writes: the retrained models, the locked-test metrics, the card, the figures.

``models`` chooses and retrains what ships (and the baseline beside it); ``metrics`` scores both on the
locked test part; ``figures`` draws ROC, calibration and saliency pictures; ``model_card`` writes
MODEL_CARD.md. ``search.export`` puts them together into a model folder (``search.model``).
"""
