"""Cross-field checks of a FedMMKT-family configuration (one line each, exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

from fedvl.schema import ConfigError, ExperimentConfig, _short


def validate_kt(cfg: ExperimentConfig, pools_data: bool = False) -> None:
    """``pools_data``: the algorithm trains each client on every client's real data (kt-centralized),
    which needs all of them in one process: never a deployment."""
    from fedvl.data.world import COLORS, DOMAINS, SHAPES
    from fedvl.fedmmkt.task_models import ARCHITECTURES

    t, k = cfg.t2i, cfg.fedmmkt
    checks = [
        (not (pools_data and cfg.run.runtime == "flower-deploy"),
         (f"algorithm {cfg.algorithm.name} pools every client's real data in one place (an upper reference); "
          "it runs in process or on Flower's simulation, not on a deployment")),
        (not cfg.run.secagg, f"run.secagg is for FedAvg-type algorithms on Flower, not {cfg.algorithm.name}"),
        (cfg.algorithm.server_opt == "none",
         f"algorithm.server_opt steps the global parameters of the parameter exchange; {cfg.algorithm.name} "
         "exchanges knowledge, not parameters: leave algorithm.server_opt=none"),
        (len(k.domains) >= 1, "fedmmkt.domains must name at least one client domain"),
        (len(k.archs) == len(k.domains),
         f"fedmmkt.archs lists {len(k.archs)} architectures for {len(k.domains)} clients (fedmmkt.domains); "
         "give one per client"),
        (len(k.colors) >= 1 and len(k.shapes) >= 1 and len(k.colors) * len(k.shapes) >= 2,
         "fedmmkt.colors x fedmmkt.shapes must give at least 2 classes"),
        (len(set(k.colors)) == len(k.colors) and len(set(k.shapes)) == len(k.shapes),
         "fedmmkt.colors and fedmmkt.shapes must not repeat"),
        (t.image_size % 2 ** (len(t.channels) - 1) == 0,
         f"t2i.image_size must be divisible by {2 ** (len(t.channels) - 1)} (one halving per extra level)"),
        (len(t.lora_targets) >= 1, "t2i.lora_targets must name at least one UNet module (e.g. to_q,to_v)"),
        (len(t.channels) >= 2 and all(c % 8 == 0 for c in t.channels),
         "t2i.channels needs >= 2 levels, each a multiple of 8 (group norm of 8 groups)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    for d in k.domains:
        if d not in DOMAINS or d == "source":
            raise ConfigError(f"fedmmkt.domains: {_short(d)} is not a client domain (known: "
                              f"{', '.join(x for x in DOMAINS if x != 'source')}; 'source' is the generator's public domain)")
    for a in k.archs:
        if a not in ARCHITECTURES:
            raise ConfigError(f"fedmmkt.archs: unknown architecture {_short(a)} (known: {', '.join(ARCHITECTURES)})")
    for c in k.colors:
        if c not in COLORS:
            raise ConfigError(f"fedmmkt.colors: unknown colour {_short(c)} (known: {', '.join(COLORS)})")
    for s in k.shapes:
        if s not in SHAPES:
            raise ConfigError(f"fedmmkt.shapes: unknown shape {_short(s)} (known: {', '.join(SHAPES)})")
    if t.source != "fedvl" and not Path(t.source).is_dir():
        raise ConfigError(f"t2i.source: {t.source} is neither 'fedvl' nor a folder (a diffusers pipeline folder "
                          "with unet/, text_encoder/, tokenizer/; nothing is downloaded)")
    if t.weights and not Path(t.weights).is_file():
        raise ConfigError(f"t2i.weights: file not found: {t.weights} (make one with `fedvl pretrain t2i`)")
    if t.weights:  # the header only: a file that is no weights at all is refused before a run folder exists
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(t.weights, "pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"t2i.weights: {t.weights} is not a safetensors weights file "
                              f"({type(e).__name__}: {e})") from None
