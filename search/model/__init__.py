"""The shipped model folder and what is drawn from it: reading and validating it, routing, saliency, prediction.

``folder`` writes a model folder and loads it (spec, safetensors, preprocessing, metrics) as untrusted input,
through the bounded readers of ``untrusted``; ``info`` is its ``preprocess.json``; ``ensemble`` ships fold
models as one; ``onnx_export`` writes its ONNX copy and compares the two; ``routing`` holds the course's
routing table and maps a model's classes to decisions; ``saliency`` draws Grad-CAM++ montages; ``prediction``
predicts scans with a folder, what ``python -m search.predict`` calls.
"""
