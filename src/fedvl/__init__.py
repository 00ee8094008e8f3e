"""fedvl: federated fine-tuning of vision-language foundation models on heterogeneous clients."""

import os

# Set before torch is imported anywhere: with OpenMP's default busy-waiting a
# training step slowed ~10x when other jobs share the cores (DESIGN.md 4b);
# passive waiting keeps it near its unloaded time. Users can still override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
