"""ECGCLIP signal side: configs, task catalog, 1D ResNet, bundles, preprocessing, inference engines.

Owns tensors and weights; knows nothing of Kafka or Redis. Import the submodule you need
(``models.config`` and ``models.catalog`` do not import torch; ``models.bundle`` and
``models.engine`` do), so this package import stays free of heavy side effects.
"""
