"""Deployed artifacts behind one predictor interface, and their latency + accuracy benchmark.

``deploy`` reads what ``export`` writes (an artifact file plus its JSON sidecar) and rebuilds the eager
model from a checkpoint; it never imports the training code (``segdistill.train``, losses).
"""
