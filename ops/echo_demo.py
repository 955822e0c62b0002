"""`ecgscreen demo --with-echo-example`: the demo run with echo heads trained on a SYNTHETIC linked cohort.

Builds, once (cached under the demo's state folder), the synthetic cohort over PTB-XL, links it,
shards it, embeds it with the committed bundle's encoder and fits a few echo heads, exactly as the
``train`` commands do; the demo's worker then runs that bundle with
``ECGSCREEN_ALLOW_SYNTHETIC_LABELS=true``, so echo alerts reach triage and FHIR flagged
``synthetic_labels``. The banner says so before and after: these scores mean nothing clinically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

BANNER = ("=" * 100 + "\n"
          "ECHO EXAMPLE - LABELS ARE SYNTHETIC. The echo heads in this run were trained on echo measurements\n"
          "INVENTED by `ecgscreen train synth-cohort` from PTB-XL statements (see its cohort.json). Their alerts\n"
          "carry the flag synthetic_labels and have NO clinical meaning; a real deployment refuses them unless\n"
          "ECGSCREEN_ALLOW_SYNTHETIC_LABELS is set.\n" + "=" * 100)
# Alerting echo targets with enough planted positives in 1510 records, plus LV wall thickness (scored).
DEMO_TASKS = ("echo.lvef_le_45", "echo.lvh_wall_ge_13mm", "echo.pasp_ge_45", "echo.mr_moderate_plus")


def echo_example_bundle(state_dir: Path, data_dir: Path, base_path: Path, say: Callable[[str], None] = print) -> Path:
    """The cached synthetic-label echo bundle (built on first use); its path."""
    from models.bundle import BundleError, load_bundle
    from schemas.errors import ECGScreenError

    if not (data_dir / "ptbxl_folds1-8_100hz.npz").is_file():
        raise ECGScreenError("missing_data", f"the echo example is built from PTB-XL records: none at {data_dir} "
                             "(pass --data-dir)")
    out = state_dir / "echo-example"
    bundle = out / "bundle"
    try:
        load_bundle(bundle)
        say(f"echo example: reusing {bundle}")
        return bundle
    except BundleError:
        pass
    _build(out, data_dir, base_path, say)
    return bundle


def _build(out: Path, data_dir: Path, base_path: Path, say: Callable[[str], None]) -> None:
    import numpy as np

    from models.bundle import load_bundle
    from models.echo_catalog import load_echo_catalog
    from models.train.echo import heads as hd
    from models.train.echo.link import echo_studies, link
    from models.train.echo.shard import read_index, write_shards
    from models.train.echo.synth import build_cohort
    from models.train.echo.tables import read_event_refs, read_table

    say("echo example: building the synthetic cohort, shards, embeddings and heads (first run only) ...")
    build_cohort(data_dir, out / "cohort")
    refs = list(read_event_refs(out / "cohort" / "events.jsonl"))
    rows = link(refs, echo_studies(read_table(out / "cohort" / "echo.csv"), "patient_ref", "study_time"),
                fractions=(0.6, 0.2, 0.2))
    base = load_bundle(base_path)
    write_shards([out / "cohort" / "events.jsonl"], rows, load_echo_catalog().task_ids, base.config.input,
                 out / "shards")
    z = hd.embed_shards(out / "shards", base.model).astype(np.float64)
    fits, skipped = hd.fit_heads(z, read_index(out / "shards"), DEMO_TASKS, "synthetic",
                                 hd.ProbeSettings(l2_grid=(1e-2, 1e-1, 1.0), cv_folds=3))
    for f in fits:
        say(f"echo example: {f.spec.id}: held-out AUROC {f.summary['test']['auroc']} "
            f"(test n={f.summary['test']['n']}, positives {f.summary['test']['pos']})")
    for t, why in skipped.items():
        say(f"echo example: {t} skipped: {why}")
    hd.echo_bundle(base, fits, out / "bundle", name=f"{base.config.name}-echo-synthetic", version="0.1.0-demo",
                   provenance={"data": "SYNTHETIC echo labels over PTB-XL (ecgscreen train synth-cohort, seed 0)",
                               "label_source": "synthetic",
                               "warning": "echo heads trained on SYNTHETIC labels: no clinical meaning"})
