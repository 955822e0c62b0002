"""Text tower and CLIP: tokenizer on PTB-XL's mixed-language reports, InfoNCE, zero-shot heads, text bundles."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from models.bundle import BundleError, export_bundle, load_bundle, make_provenance
from models.catalog import catalog_task, zero_shot_task
from models.config import ClipConfig, EncoderConfig, InputSpec, ModelConfigError, TaskSpec, TextEncoderConfig
from models.ecgclip import ECGCLIP, ECGCLIPSignalModel, clip_loss
from models.engine import make_engine
from models.text import TextEncoder, TransformerTextEncoder
from models.tokenizer import BOS, EOS, BPETokenizer, TokenizerError, normalize_report, train_bpe

REPORTS = [
    "sinus rhythm. normal ecg.", "sinusrhythmus normales ekg", "sinusrytm normalt ekg",
    "atrial fibrillation with rapid ventricular response.", "vorhofflimmern", "fÖrmaksflimmer",
    "unbestÄtigter bericht", "mÄssige amplitudenkriterien f#r linkshypertrophie",
    "r-s #bergang in v ableitungen nach links verschoben", "sinusrytm vÄnster kammarhypertrofi",
    "left bundle branch block. q waves in ii, iii, avf.", "linksschenkelblock",
]
CLASSES = ["sinus rhythm. normal ecg.", "atrial fibrillation.", "vorhofflimmern", "sinusrytm vÄnster kammarhypertrofi"]
SPEC = InputSpec(sampling_rate_hz=25.0, n_samples=250)


def tokenizer() -> BPETokenizer:
    return train_bpe(REPORTS * 3 + CLASSES * 3, vocab_size=400)


def tiny_clip(seed: int = 0) -> ECGCLIP:
    tok = tokenizer()
    torch.manual_seed(seed)
    text = TransformerTextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, width=16, layers=1, heads=2,
                                                    max_tokens=24), tok)
    return ECGCLIP(EncoderConfig(base_width=4, embed_dim=16), text)


def paired_batch(seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Two ECG-like signals per class; each class has its own rhythm frequency and lead pattern."""
    rng = np.random.default_rng(seed)
    t = np.arange(SPEC.n_samples) / SPEC.sampling_rate_hz
    xs, texts, groups = [], [], []
    for k, report in enumerate(CLASSES):
        for _ in range(2):
            pattern = np.roll(np.linspace(-1, 1, 12), 3 * k)[:, None]
            xs.append(pattern * np.sin(2 * np.pi * (0.8 + 0.7 * k) * t) + 0.2 * rng.standard_normal((12, t.size)))
            texts.append(report)
            groups.append(k)
    return torch.tensor(np.asarray(xs), dtype=torch.float32), texts, torch.tensor(groups)


# --- tokenizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "normal"), [
    ("unbestÄtigter bericht", "unbestaetigter bericht"),
    ("mÄssige amplitudenkriterien f#r linkshypertrophie", "maessige amplitudenkriterien fuer linkshypertrophie"),
    ("r-s #bergang in V ableitungen", "r-s uebergang in v ableitungen"),
    ("Sinusrytm   vÄnster\tkammarhypertrofi", "sinusrytm vaenster kammarhypertrofi"),
    ("überdrehter linkstyp", "ueberdrehter linkstyp"),
    ("st-hebung in v2-3 # 4", "st-hebung in v2-3 # 4"),  # a lone '#' between non-letters is kept
])
def test_normalisation_repairs_ptbxl_quirks(raw: str, normal: str) -> None:
    assert normalize_report(raw) == normal


def test_tokenizer_is_deterministic_lossless_and_never_oov() -> None:
    a, b = tokenizer(), tokenizer()
    assert a.merges == b.merges and a.vocab_size > 260
    for text in [*REPORTS, "völlig unbekanntes wort ¬½ ©", "QRS(T) abnormal 120 ms"]:
        ids = a.encode(text)
        assert ids[0] == BOS and ids[-1] == EOS and all(0 <= i < a.vocab_size for i in ids)
        assert a.decode(ids) == normalize_report(text).replace(" ", "")
    # Frequent clinical words become single tokens; umlaut spellings share them.
    assert len(a.encode("vorhofflimmern")) == 3
    assert a.encode("ÜBERGANG") == a.encode("#bergang") == a.encode("uebergang")
    assert len(a.encode("sinus rhythm " * 50, max_tokens=16)) == 16


def test_tokenizer_json_round_trip_and_strictness() -> None:
    tok = tokenizer()
    assert BPETokenizer.from_json(tok.to_json()).merges == tok.merges
    doc = orjson.loads(tok.to_json())
    for bad in [{**doc, "format": "other/1"}, {**doc, "extra": 1}, {**doc, "merges": [[1, 2, 3]]},
                {**doc, "merges": [[5000, 4]]}, {**doc, "normalizer": "nfc"}]:
        with pytest.raises(TokenizerError):
            BPETokenizer.from_json(orjson.dumps(bad))
    with pytest.raises(TokenizerError):
        train_bpe(REPORTS, vocab_size=100)


# --- text tower and CLIP -----------------------------------------------------------------------


def test_text_encoder_protocol_shapes_and_padding_invariance() -> None:
    clip = tiny_clip().eval()
    enc = clip.text.encoder
    assert isinstance(enc, TextEncoder) and enc.output_dim == 16
    with torch.no_grad():
        alone = clip.encode_text(["vorhofflimmern"])
        padded = clip.encode_text(["vorhofflimmern", REPORTS[10] * 3])  # forces padding of the first
        assert padded.shape == (2, 16) and torch.allclose(padded.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert torch.allclose(alone[0], padded[0], atol=1e-5)
        assert clip.encode_signal(torch.randn(3, 12, 250), normalize=False).shape == (3, 16)


def test_logit_scale_is_learnable_and_clamped() -> None:
    clip = tiny_clip()
    assert clip.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)
    assert clip.scale().item() == pytest.approx(100.0, rel=1e-5)
    with pytest.raises(ModelConfigError):
        ClipConfig(logit_scale_init=5.0, logit_scale_max=4.0)


def test_clip_loss_is_symmetric_and_groups_share_targets() -> None:
    s = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    assert clip_loss(s, t, scale) == pytest.approx(clip_loss(t, s, scale).item(), rel=1e-6)
    # One group: every text is a positive for every signal, so the target is uniform and the loss
    # cannot go below its entropy log(B), reached by uniform logits: no pressure to tell them apart.
    same = torch.zeros(6, dtype=torch.long)
    assert clip_loss(s, t, torch.tensor(0.0), same).item() == pytest.approx(np.log(6), rel=1e-6)
    assert clip_loss(s, t, scale, same).item() > np.log(6)
    # Without groups, a perfectly aligned batch scores lower than a shuffled one.
    assert clip_loss(s, s, scale) < clip_loss(s, s[torch.tensor([1, 2, 3, 4, 5, 0])], scale)


def test_contrastive_loss_decreases_on_tiny_synthetic_pairing() -> None:
    clip = tiny_clip(seed=1)
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    groups = paired_batch(0)[2]
    clip.train()
    losses = []
    for step in range(20):
        xb, tb, gb = paired_batch(step)
        loss = clip.loss(xb, tb, gb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    clip.eval()
    with torch.no_grad():
        sim = clip.encode_signal(paired_batch(99)[0]) @ clip.encode_text(CLASSES).t()
    assert (sim.argmax(1) == groups).float().mean() >= 0.75  # held-out noise: retrieval mostly right


# --- zero-shot scoring and bundles with a text tower -------------------------------------------


def zs_tasks() -> list[TaskSpec]:
    return [catalog_task("ecg.norm"), zero_shot_task("ecg.afib"), zero_shot_task("ecg.lvh"), catalog_task("ecg.mi")]


def test_zero_shot_logit_is_scaled_prompt_contrast() -> None:
    clip = tiny_clip().eval()
    tasks = zs_tasks()
    heads = torch.nn.Linear(16, 2)
    scorer = clip.scorer(tasks, heads)
    assert scorer.n_tasks == 4 and scorer.n_zero_shot == 2
    x = torch.randn(3, 12, 250)
    with torch.no_grad():
        got = scorer(x)
        z = clip.encode_signal(x, normalize=False)
        zn = torch.nn.functional.normalize(z, dim=-1)
        for col, task in [(1, tasks[1]), (2, tasks[2])]:
            pos, neg = clip.encode_text([str(task.prompt), str(task.negative_prompt)])
            assert torch.allclose(got[:, col], clip.scale() * (zn @ pos - zn @ neg), atol=1e-5)
        assert torch.allclose(got[:, [0, 3]], heads(z), atol=1e-5)


def test_zero_shot_task_needs_prompts() -> None:
    with pytest.raises(ModelConfigError):
        TaskSpec("ecg.afib", "AF", catalog_task("ecg.afib").group, 0.5, True, head="zero_shot", prompt="af")
    with pytest.raises(ModelConfigError):
        zero_shot_task("echo.any_shd")  # no prompt in the catalog
    with pytest.raises(ValueError):
        ECGCLIPSignalModel(EncoderConfig(base_width=4), linear=[0], zero_shot=[2])


def _rehash(d: Path) -> None:
    names = sorted(p.name for p in d.iterdir() if p.name != "SHA256SUMS")
    (d / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n"
                                          for n in names))


def test_bundle_with_text_tower_round_trip(tmp_path: Path) -> None:
    clip = tiny_clip().eval()
    b = export_bundle(tmp_path / "b", clip, zs_tasks(), SPEC, name="ecgclip-test", version="0.1.0", trained=False,
                      provenance=make_provenance("synthetic pairs"), linear_heads=torch.nn.Linear(16, 2))
    assert {p.name for p in b.path.iterdir()} == {"bundle.json", "weights.safetensors", "tokenizer.json",
                                                  "SHA256SUMS"}
    assert b.config.text is not None and b.text is not None and b.config.zero_shot_tasks == (1, 2)
    assert b.config.provenance["data"] == "synthetic pairs" and "created" in b.config.provenance
    again = load_bundle(b.path)
    x = np.random.default_rng(0).standard_normal((2, 12, 250)).astype(np.float32)
    np.testing.assert_array_equal(make_engine(b, "torch-cpu").infer(x), make_engine(again, "torch-cpu").infer(x))
    assert again.text is not None
    with torch.no_grad():
        assert torch.equal(again.text(["vorhofflimmern"]), clip.text(["vorhofflimmern"]))


def test_text_bundle_refusals(tmp_path: Path) -> None:
    def fresh(name: str) -> Path:
        return export_bundle(tmp_path / name, tiny_clip(), zs_tasks(), SPEC, name="t", version="0", trained=False,
                             provenance={}).path

    a = fresh("a")
    (a / "tokenizer.json").write_bytes((a / "tokenizer.json").read_bytes().replace(b"[", b"[ ", 1))
    with pytest.raises(BundleError, match="hash_mismatch"):
        load_bundle(a)
    b = fresh("b")
    (b / "tokenizer.json").write_bytes(b'{"format": "x"}')
    _rehash(b)
    with pytest.raises(BundleError) as exc:
        load_bundle(b)
    assert exc.value.reason == "invalid_tokenizer"
    c = fresh("c")
    (c / "tokenizer.json").unlink()
    _rehash(c)
    with pytest.raises(BundleError) as exc:
        load_bundle(c)
    assert exc.value.reason == "missing_file"
    d = fresh("d")
    doc = orjson.loads((d / "tokenizer.json").read_bytes())
    doc["merges"] = doc["merges"][:-1]  # one id fewer than the text config and the embedding table
    (d / "tokenizer.json").write_bytes(orjson.dumps(doc))
    _rehash(d)
    with pytest.raises(BundleError) as exc:
        load_bundle(d)
    assert exc.value.reason == "shape_mismatch"
