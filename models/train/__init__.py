"""ECGCLIP training: PTB-XL data and splits, augmentations, contrastive pre-training, linear probe,
supervised baseline, evaluation with bootstrap intervals. Pure torch/numpy; knows nothing of Kafka.

Modules: ``config`` (dataclass configs read strictly from JSON), ``data`` (records, splits),
``tasks`` (which PTB-XL labels become which catalog tasks), ``augment``, ``loop`` (seeding,
schedules, logs), ``pretrain``, ``probe``, ``supervised``, ``bundling`` (calibrated tasks into a
bundle), ``metrics`` and ``evaluate``. Import the submodule you need; this package import is free
of side effects.
"""
