"""Training a spec: the data a command loads, the device's fidelity and precision, the loop, the train-a-spec unit.

One trial's data flow, bottom up: ``data`` discovers, splits and loads the scans a command may see;
``fidelity`` and ``precision`` decide the input size, epochs and bf16 for the device; ``loop`` is the
training loop (epochs, augmentation, batch-norm recomputation, prediction); ``unit``, the train-a-spec
unit, builds a spec, trains it and maps known failures (non-finite loss, out of memory) to one
exception. Nothing here knows Optuna.
"""
