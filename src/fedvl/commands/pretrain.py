"""``fedvl pretrain vl``: the default model's cross-modal base; ``fedvl pretrain t2i``: FedMMKT's server generator."""

from __future__ import annotations

import argparse
import sys

from fedvl.commands import EXIT_USAGE, split_args

PRETRAIN_HELP = """\
Pretrain the server's text-to-image model (a diffusers UNet conditioned on the real
MiniLM-L6 text encoder) on the public source domain of the synthetic world, with the
t2i.* settings of CONFIG, and report its loss curve and the source-domain judge
accuracy of its samples. Seeded: the same settings give the same weights. The result
is cached under run.cache_dir/t2i/<key> (key = hash of the settings); FedMMKT runs
use the artifact shipped in the package when their settings match it, else the cache,
else pretrain first.

  fedvl pretrain t2i configs/fedmmkt.yaml
  fedvl pretrain t2i configs/fedmmkt.yaml --force --out t2i.safetensors   (reproduce the shipped artifact)
"""


PRETRAIN_VL_HELP = """\
fedvl pretrain vl: cross-modal pretraining of the default model, as ViLT was pretrained.

Trains the connector, a low-rank delta on the MiniLM layers and their LayerNorms with
image-text matching (hard negatives: one colour, shape, size, position or count changed)
and masked language modelling, on a public caption corpus the synthetic world renders in
a style no benchmark client uses (captions only, never a benchmark's questions). Masking
favours the words only the image decides (colour, shape, size, position, number:
mlm_grounded_prob). Writes <cache_dir>/vl/<key>.safetensors (float16; cache_dir=
results/cache) with a JSON report, a PNG of the loss and held-out accuracy curves; key =
hash of the settings. Grounding is reported as held-out accuracy on masked image-decided
words with the caption's own image against another image. Resumable: rerun the same command
after a kill. Deterministic for a seed. Settings: key=value (see fedvl.models.vlbase.
VLPretrainConfig), e.g. steps=1500 corpus_images=4000 model=tiny.

  fedvl pretrain vl                                  (reproduce the shipped base)
  fedvl pretrain vl steps=300 --out my-base.safetensors
  fedvl run model.base_weights=my-base.safetensors   (fine-tune on it)
"""


def add_parser(sub) -> None:
    pre = sub.add_parser("pretrain", help="pretrain the VL base (vl) or the FedMMKT server generator (t2i)",
                         description=PRETRAIN_VL_HELP + "\n" + PRETRAIN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("what", choices=["vl", "t2i"],
                     help="vl: the default model's cross-modal pretraining (ITM + MLM); t2i: the server "
                          "text-to-image model")
    pre.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    pre.add_argument("--out", help="also write the weights to this file, the report beside it (same name, .json; "
                                   "vl also the curves, .png)")
    pre.add_argument("--overwrite", action="store_true", help="let --out replace existing files of those names")
    pre.add_argument("--force", action="store_true", help="pretrain even if matching weights exist")
    pre.add_argument("--quiet", action="store_true", help="no live progress bar")
    pre.set_defaults(handler=main)


def main(ns) -> int:
    return _pretrain_vl(ns) if ns.what == "vl" else _pretrain_t2i(ns)


def _pretrain_vl(ns) -> int:
    import shutil

    import torch
    from rich.console import Console

    from fedvl.io import atomic_write
    from fedvl.models.vlbase import VLPretrainConfig, pretrain_key, shipped_path
    from fedvl.pretrain.vl import cached_base, pretrain
    from fedvl.report.progress import Progress
    from fedvl.schema import load_section

    path, overrides = split_args(ns.args)
    cfg = load_section(VLPretrainConfig, path, overrides)
    from fedvl.engine.device import DeviceError, resolve_device
    from fedvl.runfolder import check_writable
    from fedvl.schema import ConfigError

    outs = _out_files(ns, (".json", ".png"))
    check_writable(cfg.cache_dir, "cache_dir")

    try:  # a GPU that is not there: one line, before anything is built
        resolve_device(cfg.device)
    except DeviceError as e:
        raise ConfigError(str(e).replace("run.device", "device")) from None
    if cfg.model == "default":
        from fedvl.models.backbones import ModelUnavailableError, minilm_dir, mobilenet_weights

        try:
            minilm_dir(), mobilenet_weights()
        except ModelUnavailableError as e:
            print(f"fedvl: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    torch.set_num_threads(cfg.threads)
    console = Console(soft_wrap=True)
    progress = Progress(console, 1, enabled=not ns.quiet)
    key = pretrain_key(cfg)

    def step(done: int, total: int, loss: float) -> None:
        progress.client_start(0, "VL pretraining", 1, 1)
        progress.step(done, total, loss)
        if not progress.live and (done % 100 == 0 or done == total):
            console.print(f"step {done}/{total}: loss {loss:.4f}")

    found = None if ns.force else cached_base(cfg, progress.status)
    try:
        if found:
            progress.status(f"already pretrained: {found[0]} (--force to redo)")
            out, meta = found
        else:
            progress.status(f"VL pretraining {key}: {cfg.steps} steps of batch {cfg.batch_size}")
            out, meta = pretrain(cfg, progress.status, step, force=ns.force)
    finally:
        progress.close()
    console.print(f"held-out image-text matching accuracy: {100 * meta['held_out_itm_acc']:.1f}% (chance 50%), "
                  f"masked-word accuracy: {100 * meta['held_out_mlm_acc']:.1f}%")
    if "train_seconds" in meta:
        console.print(f"training took {meta['train_seconds']:.0f}s; report {out.with_suffix('.json')}, "
                      f"curves {out.with_suffix('.png')}")
    console.print(f"weights: {out}" + ("  (the shipped base)" if shipped_path(cfg.model).name == out.name else ""))
    if outs:
        for src, dst in zip((out, out.with_suffix(".json"), out.with_suffix(".png")), outs):
            atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
        console.print(f"written: {outs[0]} (use it with model.base_weights={outs[0]}), report {outs[1]}, "
                      f"curves {outs[2]}")
    return 0


def _out_files(ns, reports: tuple[str, ...]) -> list | None:
    """``--out PATH``: the files written there, PATH itself and its reports beside it (PATH with each
    suffix of ``reports``, where the loaders look for them). Refused in one line before any work when
    one of them exists (unless --overwrite) or is PATH itself: a user's files are never replaced
    unasked."""
    from pathlib import Path

    from fedvl.runfolder import check_writable
    from fedvl.schema import ConfigError

    if not ns.out:
        return None
    dest = Path(ns.out)
    if dest.is_dir() or dest.name in ("", ".", ".."):
        raise ConfigError(f"--out {ns.out} is a folder; give the weights file's name")
    files = [dest] + [dest.with_suffix(r) for r in reports]
    if len(set(files)) < len(files):
        raise ConfigError(f"--out {dest}: its report would take the same name; name the weights with another "
                          f"suffix, e.g. --out {dest.with_suffix('.safetensors')}")
    taken = [str(f) for f in files if f.exists() or f.is_symlink()]
    if any(f.is_dir() for f in files):
        raise ConfigError(f"--out {dest}: {next(str(f) for f in files if f.is_dir())} is a folder")
    if taken and not ns.overwrite:
        raise ConfigError(f"--out {dest} would replace {', '.join(taken)}; give --overwrite to replace "
                          f"{'them' if len(taken) > 1 else 'it'}, or another name")
    check_writable(dest.parent, "--out")
    return files


def _pretrain_t2i(ns) -> int:
    from pathlib import Path

    from rich.console import Console

    from fedvl.config import load_config
    from fedvl.fedmmkt.generator.pretrain import load_or_pretrain, save_generator
    from fedvl.report.progress import Progress

    path, overrides = split_args(ns.args)
    cfg = load_config(path, overrides)
    from fedvl.runfolder import check_writable

    outs = _out_files(ns, (".json",))
    check_writable(cfg.run.cache_dir, "run.cache_dir")
    import torch

    torch.set_num_threads(cfg.run.threads)
    console = Console()
    progress = Progress(console, 1, enabled=not ns.quiet)

    def step(done: int, total: int, loss: float) -> None:
        progress.client_start(0, "pretraining", 1, 1)
        progress.step(done, total, loss)
        if not progress.live and (done % 100 == 0 or done == total):
            console.print(f"step {done}/{total}: loss {loss:.4f}")

    try:
        from fedvl.engine.device import resolve_device

        gen, meta = load_or_pretrain(cfg.t2i, cfg.fedmmkt, Path(cfg.run.cache_dir), progress.status, step,
                                     force=ns.force, device=resolve_device(cfg.run.device))
    finally:
        progress.close()
    if "loss" in meta:
        losses = meta["loss"]
        k = max(1, len(losses) // 10)
        curve = [sum(losses[i:i + k]) / len(losses[i:i + k]) for i in range(0, len(losses), k)]
        console.print("loss curve (mean per tenth): " + " ".join(f"{v:.4f}" for v in curve))
    if "source_fidelity" in meta:
        f = meta["source_fidelity"]
        console.print(f"source-domain judge accuracy on generated images: {100 * f['judge_acc']:.1f}% "
                      f"(real images: {100 * f['judge_real_acc']:.1f}%), feature distance {f['feature_distance']:.2f}")
    if "pretrain_seconds" in meta:
        console.print(f"pretraining took {meta['pretrain_seconds']:.0f}s")
    if outs:
        save_generator(gen, outs[0], meta)
        console.print(f"written: {outs[0]} (use it with t2i.weights={outs[0]}), report {outs[1]}")
    return 0

