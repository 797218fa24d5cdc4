"""The shipped model folder and what is drawn from it: reading and validating it, routing, saliency, prediction.

``folder`` reads a model folder (spec, safetensors, preprocessing, metrics) as untrusted input;
``routing`` holds the course's routing table and maps a model's classes to decisions; ``saliency`` draws
Grad-CAM++ montages; ``prediction`` predicts scans with a folder, what ``python -m search.predict`` calls.
``search.shipping`` writes the folder.
"""
