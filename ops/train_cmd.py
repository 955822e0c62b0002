"""`ecgscreen train ...`: pre-train ECGCLIP, probe it into a bundle, train the supervised baseline, evaluate.

Every command that trains reads one JSON config (``models/train/configs/*.json``); paths in it
are relative to the working directory (the repository root). Progress goes to stderr; a JSON
summary to stdout; training logs as JSON lines under the config's ``run_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ops.cli import print_json
from workers.settings import Settings

DEFAULT_CONFIG = Path("models/train/configs/ecgclip-r18-ptbxl-100hz.json")


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train ECGCLIP on PTB-XL-style data and evaluate bundles")
    actions = p.add_subparsers(metavar="ACTION")
    pre = actions.add_parser("pretrain", help="contrastive pre-training on ECG-report pairs (training folds)")
    _common(pre)
    pre.add_argument("--epochs", type=int, default=None, help="override pretrain.optim.epochs")
    pre.set_defaults(func=cmd_pretrain)
    probe = actions.add_parser("probe", help="linear heads on the frozen pre-trained encoder -> calibrated bundle "
                                             "(cross-fitted over probe.oof_folds; --holdout: train/validation folds)")
    _common(probe)
    _labelled(probe)
    probe.add_argument("--holdout", action="store_true",
                       help="heads on the train folds, calibration on the validation folds (the comparison's probe)")
    probe.set_defaults(func=cmd_probe)
    sup = actions.add_parser("supervised", help="baseline: random-init encoder trained on the labels -> bundle")
    _common(sup)
    _labelled(sup)
    sup.set_defaults(func=cmd_supervised)
    _evaluate_parsers(actions)
    card = actions.add_parser("card", help="write the model card from the run's figures into the bundle "
                                           "(listed in its SHA256SUMS)")
    card.add_argument("bundle", type=Path)
    card.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"training config (default {DEFAULT_CONFIG})")
    card.add_argument("--run-dir", type=Path, default=None, help="override run_dir (where `train probe` left "
                                                                 "oof_scores.jsonl and crossval.json)")
    card.add_argument("--data", type=Path, default=None, help="override data.data_dir")
    card.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    card.set_defaults(func=cmd_card)
    from ops.echo_cmd import register_actions  # echo heads from a site's own data (issue 17)

    register_actions(actions)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"training config (default {DEFAULT_CONFIG})")
    p.add_argument("--data", type=Path, default=None, help="override data.data_dir")
    p.add_argument("--run-dir", type=Path, default=None, help="override run_dir (checkpoints, logs)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _labelled(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-fraction", type=float, default=None, help="override label_fraction (e.g. 0.1)")
    p.add_argument("--out", type=Path, default=None, help="bundle directory (default: see the config)")


def _evaluate_parsers(actions: Any) -> None:
    ev = actions.add_parser("evaluate", help="per-task PRAUC/AUROC with bootstrap 95%% CIs, operating points")
    ev.add_argument("bundle", type=Path)
    ev.add_argument("data", type=Path, help="PTB-XL data folder (npz + metadata csv + scp_statements.csv)")
    ev.add_argument("--scores", type=Path, default=None, help="evaluate `model predict` JSON lines instead")
    cmp = actions.add_parser("compare", help="several bundles on the same bootstrap resamples")
    cmp.add_argument("bundles", type=Path, nargs="+")
    cmp.add_argument("--data", type=Path, required=True)
    for p in (ev, cmp):
        p.add_argument("--folds", type=int, nargs="+", default=[8], help="folds to evaluate on (default 8)")
        p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="JSON only (no table)")
    ev.add_argument("--rate", type=float, default=None, help="which npz to read (default: the bundle's rate)")
    ev.set_defaults(func=cmd_evaluate)
    cmp.set_defaults(func=cmd_compare)


# --- shared --------------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Any:
    from models.train.config import load_config

    cfg = load_config(args.config)
    if args.data is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=str(args.data)))
    if args.run_dir is not None:
        cfg = dataclasses.replace(cfg, run_dir=str(args.run_dir))
    if getattr(args, "label_fraction", None) is not None:
        cfg = dataclasses.replace(cfg, label_fraction=args.label_fraction)
    return cfg


def _prepare(cfg: Any) -> tuple[Any, Any, Any, Any]:
    """(records of train+val folds, split, SCP statements, tasks) as the config defines them."""
    from models.train.data import load_ptbxl, make_split, read_statements
    from models.train.tasks import select_tasks

    d = cfg.data
    say(f"loading {d.data_dir} at {d.sampling_rate_hz:g} Hz ...")
    ds = load_ptbxl(d.data_dir, d.input_spec(), folds=(*d.train_folds, *d.val_folds))
    split = make_split(ds, d.train_folds, d.val_folds)
    statements = read_statements(Path(d.data_dir))
    tasks = select_tasks(ds, split, statements, d.min_train_pos, d.min_val_pos)
    say(f"{split.train.size} train / {split.val.size} validation records (patient-disjoint); "
        f"{len(tasks)} tasks: {', '.join(t.spec.id for t in tasks)}")
    return ds, split, statements, tasks


def _pct(cfg: Any) -> int:
    return round(cfg.label_fraction * 100)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- commands --------------------------------------------------------------------------------------


def cmd_pretrain(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.pretrain import pretrain

    cfg = _config(args)
    if args.epochs is not None:
        optim = dataclasses.replace(cfg.pretrain.optim, epochs=args.epochs)
        cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, optim=optim))
    ds, split, statements, _ = _prepare(cfg)
    out = Path(cfg.run_dir) / "pretrain"
    result = pretrain(cfg, ds, split, statements, out, quiet=args.quiet)
    last = result.history[-1]
    print_json({"checkpoint": str(out), "log": str(out / "pretrain.jsonl"), "seconds": round(result.seconds, 1),
                "epochs": last["epoch"], "loss": last["loss"], "val_loss": last.get("val_loss"),
                "zero_shot_macro_auroc": last.get("zero_shot_macro_auroc"),
                "vocab_size": result.tokenizer.vocab_size})
    return 0


def cmd_probe(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.pretrain import load_checkpoint
    from models.train.probe import run_probe

    cfg = _config(args)
    full = cfg.label_fraction >= 1.0
    if not args.holdout:
        if not full:
            raise SystemExit("the cross-fitted probe uses every label; --label-fraction needs --holdout")
        return _cv_probe(cfg, args.out)
    if not full:
        b = cfg.bundle
        cfg = dataclasses.replace(cfg, bundle=dataclasses.replace(b, name=f"{b.name}-probe{_pct(cfg)}"))
    out = args.out or Path(cfg.run_dir) / f"probe-{_pct(cfg)}"
    ckpt = Path(cfg.run_dir) / "pretrain"
    clip, meta = load_checkpoint(ckpt)
    if meta["config"] != _comparable(cfg, meta["config"]):
        say("warning: the config differs from the one the checkpoint was pre-trained with")
    ds, split, _, tasks = _prepare(cfg)
    result = run_probe(cfg, clip, ds, split, tasks, out, {"pretrain_checkpoint": str(ckpt)})
    print_json({**result.summary, "validation": _val_metrics(result.bundle)})
    return 0


def _cv_probe(cfg: Any, out: Path | None) -> int:
    """The shipped bundle: heads cross-fitted over ``probe.oof_folds``; OOF scores and figures to run_dir."""
    from models.train.crossval import run_cv_probe, select_cv_tasks, write_cv_outputs
    from models.train.data import load_ptbxl, read_statements
    from models.train.pretrain import load_checkpoint

    ckpt = Path(cfg.run_dir) / "pretrain"
    clip, meta = load_checkpoint(ckpt)
    if meta["config"] != _comparable(cfg, meta["config"]):
        say("warning: the config differs from the one the checkpoint was pre-trained with")
    d, p = cfg.data, cfg.probe
    say(f"loading {d.data_dir} folds {list(p.oof_folds)} at {d.sampling_rate_hz:g} Hz ...")
    ds = load_ptbxl(d.data_dir, d.input_spec(), folds=p.oof_folds)
    tasks = select_cv_tasks(ds, read_statements(Path(d.data_dir)), p.min_positives)
    say(f"{len(ds)} records; {len(tasks)} tasks (>= {p.min_positives} positives): "
        f"{', '.join(t.spec.id for t in tasks)}")
    result = run_cv_probe(cfg, clip, ds, tasks, out or Path(cfg.bundle.path), {"pretrain_checkpoint": str(ckpt)})
    files = write_cv_outputs(Path(cfg.run_dir), cfg, clip, ds, result)
    print_json({**result.summary, **files})
    return 0


def _comparable(cfg: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """The current config as the checkpoint stored it (JSON types), ignoring what only the probe changes."""
    import orjson

    now = orjson.loads(orjson.dumps(cfg.to_dict()))
    for key in ("label_fraction", "bundle", "probe", "supervised"):
        now[key] = saved.get(key)
    return dict(now)


def cmd_supervised(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.supervised import train_supervised

    cfg = _config(args)
    b = cfg.bundle
    cfg = dataclasses.replace(cfg, bundle=dataclasses.replace(b, name=f"{b.name}-supervised{_pct(cfg)}"))
    out = args.out or Path(cfg.run_dir) / f"supervised-{_pct(cfg)}"
    ds, split, _, tasks = _prepare(cfg)
    log = Path(cfg.run_dir) / f"supervised-{_pct(cfg)}.jsonl"
    result = train_supervised(cfg, ds, split, tasks, out, log, quiet=args.quiet)
    print_json({**result.summary, "log": str(log), "validation": _val_metrics(result.bundle)})
    return 0


def _val_metrics(bundle: Any) -> dict[str, Any]:
    """Per-task validation AUROC/PRAUC as stored in the bundle, and their macro means."""
    per = {t.id: {"auroc": t.metrics.auroc, "prauc": t.metrics.prauc} for t in bundle.config.tasks if t.metrics}
    sup = [per[t] for t in ("ecg.norm", "ecg.mi", "ecg.sttc", "ecg.cd", "ecg.hyp") if t in per]
    mean = {m: round(sum(float(v[m]) for v in sup) / len(sup), 4) for m in ("auroc", "prauc")} if sup else None
    return {"macro_superclasses": mean, "tasks": per}


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.evaluate import evaluate_bundle, format_table, public

    report = evaluate_bundle(args.bundle, args.data, args.folds, rate_hz=args.rate, n_boot=args.bootstrap,
                             seed=args.seed, scores_path=args.scores)
    if not args.json:
        print(format_table(report))
    print_json(public(report))
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.evaluate import compare_bundles, format_comparison

    cmp = compare_bundles(args.bundles, args.data, args.folds, n_boot=args.bootstrap, seed=args.seed)
    if not args.json:
        print(format_comparison(cmp))
    print_json(cmp)
    return 0


def cmd_card(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.card import write_card

    cfg = _config(args)
    sha = write_card(args.bundle, cfg, n_boot=args.bootstrap)
    print_json({"bundle": str(args.bundle), "card": str(args.bundle / "MODEL_CARD.md"), "sha256": sha})
    return 0
