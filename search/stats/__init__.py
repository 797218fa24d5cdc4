"""Statistics, with no knowledge of models or studies: ROC AUC and rates, bootstrap and Wilson intervals, paired tests.

- ``metrics``: binary metrics from probabilities (scikit-learn's ROC AUC, rates at a threshold);
- ``intervals``: stratified and paired bootstrap intervals for AUC, Wilson intervals for rates;
- ``paired``: cross-validated scores, t-intervals and the paired tests the ablation reports.
"""
