"""Byte-level BPE for mixed English/German/Swedish ECG reports, trained from the reports, stored in the bundle.

Why byte-level BPE: the reports mix three languages, abbreviations ("lahb", "rsb"), lead
names ("v2-3"), and PTB-XL's encoding damage; a byte fallback means no text is ever out of
vocabulary, and merges learnt on the reports give whole tokens to the clinical vocabulary.
Training is deterministic (ties broken by the pair's token ids), so the same corpus and
settings always give the same tokenizer; it is stored as JSON (``tokenizer.json``) and never
downloaded.

Normalisation (version ``ptbxl-1``), in order:

1. Unicode NFKC, then lower-case (PTB-XL writes upper-case umlauts inside lower-case words:
   "unbestÄtigter", "vÄnster").
2. ``#`` next to a letter is a lost "ü" (PTB-XL: "f#r" = "für", "#bergang" = "übergang").
3. German/Swedish letters are transliterated as German does without umlauts (ä->ae, ö->oe,
   ü->ue, ß->ss, å->aa) because the same corpus writes both "ueberdrehter" and "überdrehter".
4. Runs of whitespace collapse; pre-tokens are letter runs, digit runs, or single other symbols.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from schemas.errors import ECGScreenError

FORMAT = "ecgscreen-bpe/1"
NORMALIZER = "ptbxl-1"
SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<sep>")
PAD, BOS, EOS = 0, 1, 2
N_BYTES = 256
FIRST_MERGE_ID = len(SPECIALS) + N_BYTES

_LOST_UE = re.compile(r"(?<=[^\W\d_])#|#(?=[^\W\d_])")
_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "å": "aa"})
_PRETOKEN = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_")
_SPACE = re.compile(r"\s+")


class TokenizerError(ECGScreenError):
    """A tokenizer file or training request is malformed (reason ``invalid_tokenizer``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_tokenizer", detail)


def normalize_report(text: str) -> str:
    """The ``ptbxl-1`` normalisation described in the module docstring."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _LOST_UE.sub("ü", t)
    t = t.translate(_TRANSLIT)
    return _SPACE.sub(" ", t).strip()


def pretokenize(text: str) -> list[str]:
    return _PRETOKEN.findall(normalize_report(text))


def _byte_ids(word: str) -> tuple[int, ...]:
    return tuple(len(SPECIALS) + b for b in word.encode("utf-8"))


@dataclass
class BPETokenizer:
    """``merges[i]`` = (left id, right id) -> new id ``FIRST_MERGE_ID + i``; ids 0-3 special, 4-259 bytes."""

    merges: list[tuple[int, int]]
    _ranks: dict[tuple[int, int], int] = field(init=False, repr=False)
    _cache: dict[str, tuple[int, ...]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < FIRST_MERGE_ID + i and 0 <= b < FIRST_MERGE_ID + i) or min(a, b) < len(SPECIALS):
                raise TokenizerError(f"merge {i} ({a}, {b}) refers to an id not yet defined")
        self._ranks = {pair: i for i, pair in enumerate(self.merges)}
        if len(self._ranks) != len(self.merges):
            raise TokenizerError("duplicate merges")

    @property
    def vocab_size(self) -> int:
        return FIRST_MERGE_ID + len(self.merges)

    def _word(self, word: str) -> tuple[int, ...]:
        if (hit := self._cache.get(word)) is not None:
            return hit
        ids = list(_byte_ids(word))
        while len(ids) > 1:  # always apply the earliest-learnt merge present, as training did
            ranked = [(self._ranks.get(p, len(self._ranks)), k) for k, p in enumerate(itertools.pairwise(ids))]
            rank, k = min(ranked)
            if rank == len(self._ranks):
                break
            ids[k : k + 2] = [FIRST_MERGE_ID + rank]
        out = tuple(ids)
        if len(self._cache) < 100_000:  # bounded: a stream of unseen words must not grow memory
            self._cache[word] = out
        return out

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """``<bos>`` + tokens + ``<eos>``, truncated (keeping ``<eos>``) to ``max_tokens``."""
        ids = [BOS, *(i for w in pretokenize(text) for i in self._word(w)), EOS]
        if max_tokens is not None and len(ids) > max_tokens:
            ids = [*ids[: max_tokens - 1], EOS]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The normalised text WITHOUT its whitespace (pre-tokenisation drops it); for debugging and tests."""
        table = self._expansions()
        return b"".join(table[i] for i in ids if i >= len(SPECIALS)).decode("utf-8", errors="replace")

    def _expansions(self) -> list[bytes]:
        table = [b""] * len(SPECIALS) + [bytes([b]) for b in range(N_BYTES)]
        for a, b in self.merges:
            table.append(table[a] + table[b])
        return table

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, "normalizer": NORMALIZER, "specials": list(SPECIALS),
               "merges": [list(m) for m in self.merges]}
        return orjson.dumps(doc) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> BPETokenizer:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise TokenizerError(f"tokenizer.json is not JSON: {e}") from e
        expected = {"format": FORMAT, "normalizer": NORMALIZER, "specials": list(SPECIALS)}
        if not isinstance(doc, dict) or set(doc) != {*expected, "merges"}:
            raise TokenizerError(f"tokenizer.json must hold exactly {sorted({*expected, 'merges'})}")
        for key, want in expected.items():
            if doc[key] != want:
                raise TokenizerError(f"tokenizer {key} {doc[key]!r} is not supported (this build reads {want!r})")
        merges = doc["merges"]
        ok = isinstance(merges, list) and all(
            isinstance(m, list) and len(m) == 2 and all(type(v) is int for v in m) for m in merges)
        if not ok:
            raise TokenizerError("merges must be a list of [int, int] pairs")
        return cls([(a, b) for a, b in merges])


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Learn merges until ``vocab_size`` or no pair occurs ``min_frequency`` times.

    Incremental pair counts (only words containing the merged pair are revisited) keep this
    to seconds on PTB-XL's 21k reports.
    """
    if vocab_size < FIRST_MERGE_ID:
        raise TokenizerError(f"vocab_size must be >= {FIRST_MERGE_ID} (specials + bytes), got {vocab_size}")
    freq = Counter(w for t in texts for w in pretokenize(t))
    words = [list(_byte_ids(w)) for w in freq]
    counts = list(freq.values())
    pairs, where = _count_pairs(words, counts)
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - FIRST_MERGE_ID and pairs:
        best = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        if best[1] < min_frequency:
            break
        new_id = FIRST_MERGE_ID + len(merges)
        merges.append(best[0])
        _apply_merge(best[0], new_id, words, counts, pairs, where)
    return BPETokenizer(merges)


def _count_pairs(words: Sequence[list[int]], counts: Sequence[int],
                 ) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], set[int]]]:
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (w, c) in enumerate(zip(words, counts, strict=True)):
        for p in itertools.pairwise(w):
            pairs[p] += c
            where[p].add(wi)
    return pairs, where


def _apply_merge(pair: tuple[int, int], new_id: int, words: list[list[int]], counts: Sequence[int],
                 pairs: dict[tuple[int, int], int], where: dict[tuple[int, int], set[int]]) -> None:
    for wi in sorted(where.pop(pair, ())):
        w, c = words[wi], counts[wi]
        for p in itertools.pairwise(w):  # retract this word's old pairs ...
            pairs[p] -= c
        merged: list[int] = []
        k = 0
        while k < len(w):
            if k + 1 < len(w) and (w[k], w[k + 1]) == pair:
                merged.append(new_id)
                k += 2
            else:
                merged.append(w[k])
                k += 1
        words[wi] = merged
        for p in itertools.pairwise(merged):  # ... and count its new ones
            pairs[p] += c
            where[p].add(wi)
    for p in [p for p, n in pairs.items() if n <= 0]:
        del pairs[p]
