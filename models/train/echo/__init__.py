"""Echo and rare-disease heads from linked ECG and echo data: linkage, synthetic cohort, shards, probes, DDP."""
