"""`ecgscreen train link-echo | synth-cohort | shard | embed | echo-probe | fit`: echo heads from a site's own data.

The path (README "Training echo heads on your data"): ECG events + an echo table -> ``link-echo``
(labels by the catalog's rules, nearest echo within a window, patient-disjoint splits) ->
``shard`` (signals as memory-mapped arrays + an index) -> ``embed`` (the encoder of a bundle over
the shard) -> ``echo-probe`` (one calibrated linear head per task -> a bundle that records its
label source), or ``fit`` (data-parallel training of the encoder itself, torchrun/DDP). ``synth-cohort``
builds a declared-synthetic linked cohort from PTB-XL to prove the path end to end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ops.cli import print_json
from workers.settings import DEFAULT_BUNDLE, Settings


def register_actions(actions: Any) -> None:
    _link_parser(actions)
    _synth_parser(actions)
    _shard_parser(actions)
    _embed_parser(actions)
    _probe_parser(actions)
    _fit_parser(actions)
    _export_parser(actions)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- link-echo -------------------------------------------------------------------------------------


def _link_parser(actions: Any) -> None:
    from models.train.echo.link import DEFAULT_WINDOW_DAYS

    p = actions.add_parser("link-echo", help="ECG events + echo table (or EchoNext-style labels) -> linked labels")
    p.add_argument("--events", type=Path, action="append", default=[],
                   help="ecg.event/v1 JSON lines (repeatable; vendor files: convert them with `events convert`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--echo", type=Path, help="echo table, CSV or Parquet: patient, study time, measurements/grades")
    src.add_argument("--labels", type=Path, help="EchoNext-style label file: ecg_id + the 12 binary columns")
    p.add_argument("--patient-column", default=None, help="patient column (echo table default: patient_ref)")
    p.add_argument("--time-column", default="study_time", help="echo study time column (default study_time)")
    p.add_argument("--window-days", type=float, default=DEFAULT_WINDOW_DAYS,
                   help=f"largest |echo - ECG| time in days (default {DEFAULT_WINDOW_DAYS:g}; see README)")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--salt", default="ecgscreen-split-v1", help="split hash salt (change it to redraw splits)")
    p.add_argument("--out", type=Path, required=True, help="folder for linked.csv and summary.json")
    p.set_defaults(func=cmd_link_echo)


def cmd_link_echo(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from models.echo_catalog import load_echo_catalog
    from models.train.echo import link as lk
    from models.train.echo.tables import LinkageError, read_event_refs, read_table, require_columns

    cat = load_echo_catalog()
    refs = {r.ecg_id: r for path in args.events for r in read_event_refs(path)}
    if args.echo is not None:
        if not refs:
            raise LinkageError("--echo needs the ECGs: pass --events")
        patient = args.patient_column or "patient_ref"
        table = read_table(args.echo)
        require_columns(table, (patient, args.time_column), args.echo)
        studies = lk.echo_studies(table, patient, args.time_column, cat)
        rows = lk.link(refs.values(), studies, args.window_days, args.fractions, args.salt)
        source = {"echo_table": str(args.echo), "studies": len(studies), "window_days": args.window_days}
    else:
        table = read_table(args.labels)
        rows = lk.echonext_labels(table, refs, args.patient_column, args.fractions, args.salt, cat, args.labels)
        source = {"echonext_labels": str(args.labels)}
    lk.write_manifest(rows, cat.task_ids, args.out / "linked.csv")
    summary = {**source, "ecgs_in": len(refs), "ecgs_linked": len(rows), "manifest": str(args.out / "linked.csv"),
               "fractions": list(args.fractions), "salt": args.salt, "counts": lk.counts(rows, cat.task_ids)}
    (args.out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print_json(summary)
    return 0


# --- synth-cohort, shard, embed, echo-probe ------------------------------------------------------


def _synth_parser(actions: Any) -> None:
    p = actions.add_parser("synth-cohort", help="a DECLARED-SYNTHETIC linked cohort from PTB-XL (echo values invented)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="PTB-XL folder (default ../shared/data)")
    p.add_argument("--out", type=Path, required=True, help="folder for events.jsonl, echo.csv, planted.csv, cohort")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N records only")
    p.set_defaults(func=cmd_synth_cohort)


def cmd_synth_cohort(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.echo.synth import build_cohort

    summary = build_cohort(args.data, args.out, args.seed, args.limit)
    print_json({k: v for k, v in summary.items() if k != "definition"} | {"definition": str(args.out / "cohort.json")})
    return 0


def _shard_parser(actions: Any) -> None:
    p = actions.add_parser("shard", help="linked ECGs -> memory-mapped shards + index (Parquet with pyarrow)")
    p.add_argument("--events", type=Path, action="append", required=True, help="ecg.event/v1 JSON lines (repeatable)")
    p.add_argument("--linked", type=Path, required=True, help="linked.csv from link-echo")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="whose input spec to prepare for")
    p.add_argument("--shard-size", type=int, default=2048, help="records per shard (default 2048)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_shard)


def cmd_shard(args: argparse.Namespace, settings: Settings) -> int:
    from models.bundle import load_bundle
    from models.train.echo.link import read_manifest
    from models.train.echo.shard import write_shards

    spec = load_bundle(args.bundle).config.input
    rows, tasks = read_manifest(args.linked)
    print_json(write_shards(args.events, rows, tasks, spec, args.out, args.shard_size))
    return 0


def _embed_parser(actions: Any) -> None:
    p = actions.add_parser("embed", help="precompute a bundle encoder's embeddings of a shard folder")
    p.add_argument("shards", type=Path)
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"encoder to use (default {DEFAULT_BUNDLE})")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace, settings: Settings) -> int:
    import time

    import numpy as np
    import orjson
    import torch

    from models.bundle import load_bundle
    from models.train.echo.heads import embed_shards
    from models.train.echo.shard import read_meta

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    if read_meta(args.shards)["input"] != bundle.config.input.to_dict():
        raise SystemExit("the shards were prepared for another input spec: run `train shard` with this bundle")
    started = time.perf_counter()
    z = embed_shards(args.shards, bundle.model, args.batch, args.workers)
    seconds = time.perf_counter() - started
    path = args.shards / f"embeddings-{bundle.sha256[:12]}.npy"
    np.save(path, z)
    meta = {"embeddings": str(path), "bundle": str(args.bundle), "sha256": bundle.sha256, "shape": list(z.shape),
            "seconds": round(seconds, 1), "ecg_per_s": round(len(z) / max(seconds, 1e-9), 1)}
    path.with_suffix(".json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    print_json(meta)
    return 0


def _probe_parser(actions: Any) -> None:
    p = actions.add_parser("echo-probe", help="calibrated linear echo heads on embeddings -> bundle with label source")
    p.add_argument("shards", type=Path)
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="base bundle (its encoder made the embeddings)")
    p.add_argument("--label-source", required=True, choices=LABEL_SOURCES,
                   help="where the labels came from; 'catalog' = each task's catalog source (real echo data)")
    p.add_argument("--tasks", nargs="*", default=None, help="task ids (default: every task in the shards)")
    p.add_argument("--planted", type=Path, default=None, help="planted.csv of a synthetic cohort: report the ceiling")
    p.add_argument("--name", default=None)
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--data", default="", help="data description for the bundle's provenance")
    p.add_argument("--out", type=Path, required=True, help="bundle directory")
    _rule_arguments(p)
    p.set_defaults(func=cmd_echo_probe)


LABEL_SOURCES = ("echo_measurement", "echo_report", "clinical_diagnosis", "synthetic", "catalog")


def _rule_arguments(p: Any) -> None:
    p.add_argument("--operating-point", default="min_sensitivity=0.8", metavar="KIND=VALUE",
                   help="threshold rule on validation: min_sensitivity=S, or min_ppv=P (PPV at each task's "
                        "prevalence) (default min_sensitivity=0.8)")
    p.add_argument("--prevalence", nargs="*", default=[], metavar="TASK=P",
                   help="the site's prevalence per task (default: the task catalog's literature figure)")
    p.add_argument("--validation-calibration", action="store_true",
                   help="keep probabilities at the validation split's prevalence (default: shift them to TASK's)")


def _probe_settings(args: argparse.Namespace, **over: Any) -> Any:
    from models.train.echo import heads as hd

    try:
        rule = hd.OperatingRule.parse(args.operating_point, args.prevalence, not args.validation_calibration)
    except ValueError as e:
        raise SystemExit(f"--operating-point/--prevalence: {e}") from None
    return hd.ProbeSettings(rule=rule, **over)


def cmd_echo_probe(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from models.bundle import load_bundle
    from models.train.echo import heads as hd
    from models.train.echo.shard import read_index

    torch_threads_one()
    base = load_bundle(args.bundle)
    index = read_index(args.shards)
    z = np.load(args.shards / f"embeddings-{base.sha256[:12]}.npy").astype(np.float64)
    tasks = args.tasks or list(index.tasks)
    fits = []
    skipped: dict[str, str] = {}
    probe_cfg = _probe_settings(args)
    for t in tasks:
        source = _label_source(t, args.label_source)
        result = hd.fit_one(t, z, index, source, probe_cfg)
        if isinstance(result, str):
            skipped[t] = result
        else:
            fits.append(result)
    if not fits:
        raise SystemExit(f"no task had enough labels: {skipped}")
    synthetic = args.label_source == "synthetic"
    name = args.name or f"{base.config.name}-echo{'-synthetic' if synthetic else ''}"
    prov = {"data": args.data or str(args.shards), "method": "linear probes on the base encoder's embeddings",
            "label_source": args.label_source, "shards": str(args.shards),
            "operating_point": args.operating_point, **_synthetic_warning(synthetic)}
    sha = hd.echo_bundle(base, fits, args.out, name=name, version=args.version, provenance=prov)
    print_json({"bundle": str(args.out), "sha256": sha, "skipped": skipped,
                "tasks": {f.spec.id: {**f.summary, "label_source": f.spec.label_source,
                                      "planted_test_auroc": _ceiling(args.planted, index, f.spec.id)} for f in fits}})
    return 0


def _synthetic_warning(synthetic: bool) -> dict[str, str]:
    return {"warning": "echo heads trained on SYNTHETIC labels: no clinical meaning; they alert only with "
                       "ECGSCREEN_ALLOW_SYNTHETIC_LABELS"} if synthetic else {}


def torch_threads_one() -> None:
    import torch

    torch.set_num_threads(1)


def _label_source(task_id: str, choice: str) -> Any:
    from models.echo_catalog import load_echo_catalog

    return load_echo_catalog().target(task_id).label_source if choice == "catalog" else choice


def _ceiling(planted: Path | None, index: Any, task_id: str) -> float | None:
    from models.train.echo.heads import planted_auroc
    from models.train.echo.synth import PLANTED_SCORE, read_planted

    if planted is None or task_id not in PLANTED_SCORE:
        return None
    column, sign = PLANTED_SCORE[task_id]
    return planted_auroc(read_planted(planted), index, task_id, column, sign)


def _fit_parser(actions: Any) -> None:
    p = actions.add_parser("fit", help="train encoder + echo heads on shards; data-parallel under torchrun (DDP)")
    p.add_argument("shards", type=Path)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint/, fit.json)")
    p.add_argument("--bundle", type=Path, default=None, help="start from this bundle's encoder (default: random init)")
    p.add_argument("--base-width", type=int, default=None, help="encoder width when starting from scratch")
    p.add_argument("--embed-dim", type=int, default=None, help="embedding width when starting from scratch")
    p.add_argument("--tasks", nargs="*", default=[], help="task ids (default: every task in the shards)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--global-batch", type=int, default=32, help="records per optimiser step, over all processes")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per process per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--stop-at", type=int, default=None, help="leave after this step with a checkpoint (preemption)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    import orjson
    import torch
    import torch.distributed as dist

    from models.config import EncoderConfig
    from models.train.echo import ddp

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    d = ddp.init_distributed()
    init, encoder = None, EncoderConfig()
    if args.bundle is not None:
        from models.bundle import load_bundle

        base = load_bundle(args.bundle)
        init, encoder = ddp.encoder_init(base.model.state_dict()), base.config.encoder
    else:
        over = {k: v for k, v in (("base_width", args.base_width), ("embed_dim", args.embed_dim)) if v is not None}
        encoder = dataclasses.replace(encoder, **over)
    cfg = ddp.FitConfig(steps=args.steps, global_batch=args.global_batch, lr=args.lr, warmup_steps=args.warmup_steps,
                        seed=args.seed, accumulate=args.accumulate, checkpoint_every=args.checkpoint_every,
                        workers=args.workers, amp=not args.no_amp, tasks=ddp.tasks_of(args.shards, args.tasks),
                        encoder=encoder)
    result = ddp.fit(args.shards, args.out, cfg, init, resume=args.resume, d=d, stop_at=args.stop_at)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if d.main:
        summary = {"world_size": d.world, "accumulate": cfg.accumulate, "steps": result.step,
                   "seconds": round(result.seconds, 2),
                   "steps_per_s": round(result.steps_run / max(result.seconds, 1e-9), 3),
                   "losses": result.losses, "checkpoint": str(args.out / "checkpoint")}
        (args.out / "fit.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        print_json(summary)
    return 0


def _export_parser(actions: Any) -> None:
    p = actions.add_parser("export-bundle", help="a `train fit` checkpoint -> calibrated, deployable bundle")
    p.add_argument("checkpoint", type=Path, help="RUN/checkpoint written by train fit")
    p.add_argument("--shards", type=Path, required=True, help="the shards it was fitted on (validation split)")
    p.add_argument("--label-source", required=True, choices=LABEL_SOURCES,
                   help="where the labels came from; 'catalog' = each task's catalog source (real echo data)")
    p.add_argument("--min-val-pos", type=int, default=5, help="validation positives a head needs (default 5)")
    p.add_argument("--name", default="ecgclip-echo-finetuned")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--data", default="", help="data description for the bundle's provenance")
    p.add_argument("--out", type=Path, required=True, help="bundle directory")
    _rule_arguments(p)
    p.set_defaults(func=cmd_export_bundle)


def cmd_export_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from models.train.echo.export import export_bundle, read_checkpoint

    torch_threads_one()
    tasks = read_checkpoint(args.checkpoint, args.shards).tasks
    synthetic = args.label_source == "synthetic"
    prov = {"data": args.data or str(args.shards), "method": "encoder and heads fine-tuned by train fit",
            "label_source": args.label_source, "shards": str(args.shards),
            "operating_point": args.operating_point, **_synthetic_warning(synthetic)}
    bundle, skipped = export_bundle(args.checkpoint, args.shards, args.out,
                                    {t: _label_source(t, args.label_source) for t in tasks},
                                    _probe_settings(args, min_val_pos=args.min_val_pos),
                                    name=args.name, version=args.version, provenance=prov)
    print_json({"bundle": str(args.out), "sha256": bundle.sha256, "skipped": skipped,
                "tasks": {t.id: {"label_source": t.label_source, "threshold": t.threshold,
                                 "target": t.target.to_dict() if t.target else None, "prevalence": t.prevalence,
                                 "validation": t.metrics.to_dict() if t.metrics else None}
                          for t in bundle.config.tasks}})
    return 0
