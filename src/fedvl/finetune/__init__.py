"""The fine-tuning family (FedAvg, FedProx, FedDAT, local, centralized): parameters travel."""
