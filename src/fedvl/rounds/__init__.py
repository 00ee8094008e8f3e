"""The round core: the loop written once, its state and checkpoints."""
