"""The options of the parameter family's plugins, one module per plugin, named as the plugin's module in
``fedvl.algorithms`` (``options/feddat.py`` is ``algorithms/feddat.py``'s), as peft keeps each method's
``config.py`` beside its model. Each module holds one small dataclass (fields, docstrings, ``RANGES``)
that :class:`fedvl.schema.AlgorithmConfig` inherits, so the keys stay flat (``algorithm.kd_weight``).

Why a package of its own and not ``fedvl/algorithms/options/``: importing anything under
``fedvl.algorithms`` runs that package's ``__init__``, which registers every algorithm (torch,
models, the training loop), and ``fedvl.schema`` (foundation) reads these classes. This package
imports nothing but the standard library, so it sits at the foundation with ``schema``.
FedMMKT's options are its own sections and live in its folder (``fedvl/fedmmkt/options.py``), whose
``__init__`` imports nothing."""
