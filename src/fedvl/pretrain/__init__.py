"""Pretraining programs that make a shipped base: ``vl`` (``fedvl pretrain vl``: the default model's
cross-modal base, loaded by :mod:`fedvl.models.vlbase`). The server generator's pretraining
(``fedvl pretrain t2i``) lives with the generator it trains, in FedMMKT's folder
(:mod:`fedvl.fedmmkt.generator.pretrain`), since only FedMMKT runs use it and every FedMMKT run may call it."""
