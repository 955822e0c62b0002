"""ECGCLIP: configs, task catalog, signal and text towers, bundles, calibration, preprocessing, engines.

Owns tensors and weights; knows nothing of Kafka or Redis. Import the submodule you need:
``models.config``, ``models.catalog``, ``models.calibration``, ``models.tokenizer`` and
``models.preprocess`` do not import torch (the worker and tools can read configs, calibrate
and tokenize without the heavy stack); ``models.bundle``, ``models.engine``, ``models.explain``
and the networks do. See ``models/README.md`` for the design and what has been run where.
"""
