"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629.

Everything trainable (adapters / LoRA / biases ..., connector, head) travels
and is averaged, weighted by sample count unless ``algorithm.aggregation=uniform``.
The base classes already are FedAvg; this module only registers them.
"""

from fedvl.algorithms.base import Algorithm, ClientUpdate, ServerRule, register

ALGORITHM = register(Algorithm(
    name="fedavg",
    server=ServerRule,
    client=ClientUpdate,
    summary="FedAvg of every trainable parameter (PEFT method from model.peft)",
))
