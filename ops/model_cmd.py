"""`ecgscreen model ...`: model bundles: create, inspect, score, compile, verify, benchmark."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ops.cli import print_json
from schemas.errors import ConfigError
from workers.settings import Settings

ENGINE_CHOICES = ("auto", "torch-cpu", "torch-cpu-bf16", "torch-cpu-compile", "torch-cuda", "tensorrt")


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="model bundles")
    actions = p.add_subparsers(metavar="ACTION")
    i = actions.add_parser("init-untrained", help="write a randomly initialised bundle (integration testing)")
    i.add_argument("out", type=Path)
    i.add_argument("--arch", choices=("r18", "r34"), default="r18")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--base-width", type=int, default=64)
    i.add_argument("--rate", type=float, default=100.0, help="input sampling rate in Hz (default 100)")
    i.add_argument("--samples", type=int, default=None, help="input samples (default 10 s at --rate)")
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(func=cmd_init_untrained)
    n = actions.add_parser("info", help="what a bundle is: identity, shape, input spec, tasks, files (JSON)")
    n.add_argument("bundle", type=Path)
    n.set_defaults(func=cmd_info)
    _predict_parser(actions)
    c = actions.add_parser("compile", help="build (and cache) a compiled engine for this machine")
    c.add_argument("bundle", type=Path)
    c.add_argument("--engine", choices=ENGINE_CHOICES[1:], default="tensorrt")
    _engine_options(c)
    c.set_defaults(func=cmd_compile)
    v = actions.add_parser("verify", help="an engine's scores against eager float32 on sample inputs")
    v.add_argument("bundle", type=Path)
    v.add_argument("--engine", choices=ENGINE_CHOICES, required=True)
    v.add_argument("--n", type=int, default=32, help="synthetic records when no --input (default 32)")
    v.add_argument("--input", type=Path, nargs="+", default=None, help="real records instead (as for predict)")
    v.add_argument("--csv", type=Path, default=None)
    v.add_argument("--atol", type=float, default=None, help="max |probability difference| (default by engine)")
    _engine_options(v)
    v.set_defaults(func=cmd_verify)
    from ops.bench import add_arguments

    b = actions.add_parser("bench", help="ECG/s against batch size per engine (same as python -m ops.bench)")
    add_arguments(b)
    b.set_defaults(func=cmd_bench)


def _predict_parser(actions: Any) -> None:
    p = actions.add_parser("predict", help="one JSON line per record: its id and a score per task")
    p.add_argument("bundle", type=Path)
    p.add_argument("input", type=Path, nargs="+",
                   help="events .jsonl, WFDB record paths, or a PTB-XL .npz (with --csv or a .csv after it)")
    p.add_argument("--csv", type=Path, default=None, help="metadata csv of a PTB-XL .npz")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="torch-cpu")
    p.add_argument("--batch-size", type=int, default=32)
    _engine_options(p)
    p.set_defaults(func=cmd_predict)


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp16", "bf16"), default="fp16", help="GPU engines")
    p.add_argument("--cache-dir", type=Path, default=None, help="TensorRT program cache (default ECGSCREEN_TRT_CACHE)")
    p.add_argument("--no-cuda-graphs", action="store_true")


def _options(args: argparse.Namespace, settings: Settings) -> Any:
    from models.engine import EngineOptions

    cache_dir = args.cache_dir or settings.engine_tuning.trt_cache
    return EngineOptions(precision=args.precision, cache_dir=cache_dir, cuda_graphs=not args.no_cuda_graphs)


# --- init-untrained, info ------------------------------------------------------------------------


def cmd_init_untrained(args: argparse.Namespace, settings: Settings) -> int:
    from models.bundle import init_untrained_bundle
    from models.config import InputSpec

    samples = args.samples or round(10 * args.rate)
    spec = InputSpec(sampling_rate_hz=args.rate, n_samples=samples)
    bundle = init_untrained_bundle(args.out, arch=args.arch, seed=args.seed, input_spec=spec,
                                   base_width=args.base_width, overwrite=args.overwrite)
    print_json({"path": str(args.out), "sha256": bundle.sha256, "trained": False})
    return 0


def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    from models.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    c = bundle.config
    print_json({
        "path": str(bundle.path), "sha256": bundle.sha256, "schema_version": c.schema_version, "name": c.name,
        "version": c.version, "trained": c.trained, "encoder": c.encoder.to_dict(), "input": c.input.to_dict(),
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "text": None if c.text is None else {**c.text.to_dict(), "prompt_check": _prompt_check(bundle)},
        "tasks": [_task_info(t) for t in c.tasks], "provenance": c.provenance,
        "files": {p.name: p.stat().st_size for p in sorted(bundle.path.iterdir())},
    })
    return 0


def _task_info(t: Any) -> dict[str, Any]:
    cal = t.calibration
    return {"id": t.id, "name": t.name, "group": t.group.value, "head": t.head, "threshold": t.threshold,
            "alert": t.alert, "label_source": t.label_source, "calibration": "none" if cal is None else cal.method,
            "target": None if t.target is None else t.target.to_dict(),
            "metrics": None if t.metrics is None else t.metrics.to_dict(),
            **({"prompt": t.prompt, "negative_prompt": t.negative_prompt} if t.head == "zero_shot" else {})}


def _prompt_check(bundle: Any) -> dict[str, Any] | None:
    """Do the embedded zero-shot prompts match what the bundled text tower computes now?"""
    import torch
    import torch.nn.functional as F

    idx = bundle.config.zero_shot_tasks
    if not idx or bundle.text is None:
        return None
    tasks = bundle.config.tasks
    with torch.no_grad():
        pos = F.normalize(bundle.text([tasks[i].prompt for i in idx]), dim=-1)
        neg = F.normalize(bundle.text([tasks[i].negative_prompt for i in idx]), dim=-1)
    m = bundle.model
    diff = max(float((pos - m.prompts_pos.cpu()).abs().max()), float((neg - m.prompts_neg.cpu()).abs().max()))
    return {"max_abs_diff": diff, "consistent": diff < 1e-4}


# --- reading records -----------------------------------------------------------------------------

Item = tuple[dict[str, Any], np.ndarray | None, float, tuple[str, ...], str | None]  # id, signal, fs, leads, err


def read_records(paths: Sequence[Path], csv: Path | None = None, limit: int | None = None) -> Iterator[Item]:
    """Records from events JSONL, a PTB-XL npz (+csv), or WFDB paths, each with its id fields."""
    first = paths[0]
    if first.suffix in (".jsonl", ".json", ".ndjson"):
        yield from _events(paths, limit)
    elif first.suffix == ".npz":
        csvs = [p for p in paths[1:] if p.suffix == ".csv"]
        meta = csv or (csvs[0] if csvs else None)
        if meta is None:
            raise ConfigError(f"{first} needs its metadata csv: pass --csv or the .csv after it")
        yield from _ptbxl(first, meta, limit)
    else:
        yield from _wfdb(paths, limit)


def _events(paths: Sequence[Path], limit: int | None) -> Iterator[Item]:
    from schemas.codec import DecodeError, decode_event

    n = 0
    for path in paths:
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, start=1):
                if limit is not None and n >= limit:
                    return
                n += 1
                try:
                    ev = decode_event(line.rstrip(b"\r\n"))
                except DecodeError as err:
                    yield {"file": str(path), "line": line_no}, None, 0.0, (), str(err.reason)
                    continue
                yield {"event_id": ev.event_id}, ev.signal_mv, ev.sampling_rate_hz, ev.leads, None


def _ptbxl(npz: Path, csv: Path, limit: int | None) -> Iterator[Item]:
    from ops.feed import ptbxl_records

    with np.load(npz) as z:
        ecg_ids = [int(v) for v in z["ecg_id"]]
    for ecg_id, rec in zip(ecg_ids, ptbxl_records(npz, csv, limit), strict=False):
        yield {"ecg_id": ecg_id}, rec.signal_mv, rec.fs, rec.leads, None


def _wfdb(paths: Sequence[Path], limit: int | None) -> Iterator[Item]:
    from ops.feed import wfdb_records

    for k, (path, rec) in enumerate(zip(paths, wfdb_records(paths), strict=True)):
        if limit is not None and k >= limit:
            return
        ids = {"event_id": rec.event_id, "record": re.sub(r"\.hea$", "", str(path))}
        yield ids, rec.signal_mv, rec.fs, rec.leads, None


# --- predict -------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from models.bundle import load_bundle
    from models.engine import make_engine

    bundle = load_bundle(args.bundle)
    engine = make_engine(bundle, args.engine, _options(args, settings))
    pending: list[tuple[dict[str, Any], np.ndarray, tuple[str, ...]]] = []
    for ids, sig, fs, leads, err in read_records(args.input, args.csv, args.limit):
        if err is not None or sig is None:
            print_json({**ids, "error": err})
            continue
        prepared = _prepare(ids, sig, fs, leads, bundle)
        if prepared is not None:
            pending.append(prepared)
        if len(pending) >= args.batch_size:
            _flush(pending, engine, bundle)
    _flush(pending, engine, bundle)
    return 0


def _prepare(ids: dict[str, Any], sig: np.ndarray, fs: float, leads: tuple[str, ...],
             bundle: Any) -> tuple[dict[str, Any], np.ndarray, tuple[str, ...]] | None:
    from models.preprocess import PreprocessError, prepare_record

    try:
        x, absent = prepare_record(sig, fs, leads, bundle.config.input)
    except PreprocessError as err:
        print_json({**ids, "error": err.reason})
        return None
    return ids, x, absent


def _flush(pending: list[tuple[dict[str, Any], np.ndarray, tuple[str, ...]]], engine: Any, bundle: Any) -> None:
    if not pending:
        return
    probs = engine.infer(np.stack([x for _, x, _ in pending]))
    tasks = bundle.config.tasks
    for (ids, _, absent), row in zip(pending, probs, strict=True):
        scores = {t.id: round(float(p), 6) for t, p in zip(tasks, row, strict=True)}
        above = [t.id for t, p in zip(tasks, row, strict=True) if p >= t.threshold]
        print_json({**ids, "scores": scores, "above_threshold": above, "absent_leads": list(absent),
                    "model_sha256": bundle.sha256})
    pending.clear()


# --- compile, verify, bench ----------------------------------------------------------------------


def cmd_compile(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from models.bundle import load_bundle
    from models.engine import make_engine

    bundle = load_bundle(args.bundle)
    started = time.perf_counter()
    engine = make_engine(bundle, args.engine, _options(args, settings))
    warmup = getattr(engine, "warmup", None)
    if callable(warmup):
        warmup()
    print_json({"engine": engine.name, "bundle_sha256": bundle.sha256,
                "cache_path": str(getattr(engine, "cache_path", "") or "") or None,
                "seconds": round(time.perf_counter() - started, 2)})
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    from models.bundle import load_bundle
    from models.engine import make_engine
    from models.verify import synthetic_inputs, verify_engine

    bundle = load_bundle(args.bundle)
    if args.input:
        items = [_prepare(ids, s, fs, leads, bundle) for ids, s, fs, leads, err in
                 read_records(args.input, args.csv, args.n) if err is None and s is not None]
        x = np.stack([it[1] for it in items if it is not None])
    else:
        x = synthetic_inputs(bundle.config.input, args.n)
    engine = make_engine(bundle, args.engine, _options(args, settings))
    report = verify_engine(bundle, engine, x)
    if args.atol is not None:
        report = dataclasses.replace(report, tolerance=args.atol)
    print_json(report.to_dict())
    return 0 if report.ok else 1


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from ops.bench import bench

    return bench(args)
