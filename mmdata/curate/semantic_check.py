"""Can the embeddings tell a copy from a neighbour? The semantic tier's check, run before it deletes.

SemDeDup calls two samples duplicates when their cosine similarity exceeds ``1 - eps``. That removes
copies only where copies sit apart from the nearest neighbours of unrelated pictures: a small or
undertrained model puts distinct scenes at cosine 0.998, and then any eps deletes unrelated pictures.
On a sample of each dataset the check measures three distributions of cosine similarity:

* **nearest neighbour**: for up to ``check_rows`` samples that no other tier grouped (no known copy),
  the similarity to their nearest other sample, searched within their k-means clusters (the tier's
  own, so the cost is a fraction of the tier's). This is what the tier decides on;
* **random pairs**: as many random pairs (the scale of the space);
* **known copies**: pairs the near tier verified on pixels (re-encodes, resizes, crops, brightness
  shifts, mirrors) that are not identical files: what a copy looks like in this space.

The rule, in this order:

* **refuse** when ``1 - eps`` lies inside the bulk of nearest-neighbour similarities: more than
  ``REFUSE_ABOVE`` (half) of the sampled samples have their nearest neighbour above it;
* **refuse** when ``1 - eps`` cuts through a continuous tail instead of a gap: at least as many
  samples (and at least ``MIN_TAIL``) have their nearest neighbour just below it, within eps
  (``1 - 2 eps`` to ``1 - eps``), as above it. Copies the embeddings can tell apart form a group of
  their own near 1, with a gap below it; where the neighbours of unrelated pictures run on up to the
  threshold and past it, what the tier flags is their tail;
* **warn** when the gap is thin (a quarter as many just below as above), when the threshold misses
  most known copies, when there are too few known copies to compare with (run the near tier too),
  or too few samples to measure.

A refused tier marks nothing unless forced (``force_semantic`` / ``--force-semantic``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmdata.curate.semantic import normalised

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
REFUSE_ABOVE = 0.5  # of the sampled nearest neighbours above 1 - eps: the threshold is in the bulk
THIN_GAP = 0.25  # just below / above 1 - eps from which the gap is thin (a warning); from 1: no gap
MIN_TAIL = 5  # sampled nearest neighbours just below 1 - eps needed to call it a tail
MIN_COPIES = 20  # known copies needed to say how many of them the threshold keeps
MIN_SAMPLES = 20  # samples without a known copy needed to measure anything


@dataclass(frozen=True)
class SemanticCheck:
    """What the check measured and decided; stored as a dict in ``dedup.parquet``'s metadata."""

    verdict: str  # one line for people: "ok: ...", "warning: ...", "refused: ..." or "forced: ..."
    ran: bool  # the tier marked duplicates (not refused, or forced)
    refused: bool  # the rule refused the tier (it still ran when forced)
    forced: bool
    eps: float
    threshold: float  # 1 - eps: pairs above it are duplicates
    samples: int  # samples without a known copy whose nearest neighbour was measured
    nearest_neighbour: dict[str, float]  # quantiles of their nearest-neighbour similarity ("q50": median)
    random_pairs: dict[str, float]  # quantiles of the similarity of random pairs
    above_threshold: float | None  # fraction of the sampled nearest neighbours above the threshold
    just_below_threshold: float | None  # fraction between 1 - 2 eps and the threshold
    separated: bool | None  # the threshold sits in a gap (just below < THIN_GAP x above); None: not measured
    known_copies: int  # pixel-verified copies measured
    copies: dict[str, float] | None  # their similarity quantiles (None: fewer than MIN_COPIES)
    copies_above_threshold: float | None  # fraction of the known copies above the threshold

    def summary(self) -> str:
        """The check as a few aligned lines, for the dedup summary."""
        def quantiles(values: dict[str, float] | None) -> str:
            return "  ".join(f"{name} {value:.4f}" for name, value in (values or {}).items()) or "-"

        lines = [f"{'semantic check':<24}{self.verdict}",
                 f"{'  nearest neighbour':<24}{quantiles(self.nearest_neighbour)}  "
                 f"({self.samples:,} samples without a known copy)",
                 f"{'  random pairs':<24}{quantiles(self.random_pairs)}",
                 f"{'  known copies':<24}{quantiles(self.copies)}  ({self.known_copies:,} pixel-verified pairs)"]
        if self.above_threshold is not None:
            copies = "" if self.copies_above_threshold is None else (
                f", known copies {self.copies_above_threshold:.1%}")
            lines.append(f"{'  1 - eps':<24}{self.threshold:.4f}: nearest neighbours above it "
                         f"{self.above_threshold:.1%}, within eps below it {self.just_below_threshold:.1%}{copies}; "
                         f"the tier {'ran' if self.ran else 'did not run'}")
        return "\n".join(lines)


def check_semantic(
    embeddings: np.ndarray,
    groups: list[np.ndarray],
    eps: float,
    *,
    known: np.ndarray | None = None,
    copy_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    check_rows: int = 10_000,
    force: bool = False,
    seed: int = 0,
    block_rows: int = 2048,
) -> SemanticCheck:
    """Measure ``embeddings`` (rows of any float dtype) and decide whether the tier may run at ``eps``.

    ``groups``: the tier's clusters (:func:`mmdata.curate.semantic.semantic_groups`); ``known``: mask
    of the rows that another tier already grouped (left out of the nearest-neighbour sample);
    ``copy_pairs``: (left rows, right rows) of pixel-verified, non-identical copies, or None when no
    near tier ran. Memory: one cluster at a time.
    """
    rng = np.random.default_rng(seed)
    sample = check_sample(len(embeddings), known, check_rows, rng)
    nearest = nearest_similarity(embeddings, sample, groups, block_rows)
    return decide(embeddings, nearest, eps, copy_pairs=copy_pairs, check_rows=check_rows, force=force, rng=rng)


def check_sample(rows: int, known: np.ndarray | None, check_rows: int, rng: np.random.Generator) -> np.ndarray:
    """The rows whose nearest neighbour the check measures, ascending: up to ``check_rows`` of the ``rows``
    that ``known`` does not mark (the first draw of ``rng``, the check's generator)."""
    unknown = np.flatnonzero(~known) if known is not None else np.arange(rows)
    return np.sort(rng.choice(unknown, min(check_rows, len(unknown)), replace=False)) if rows > 1 else unknown[:0]


def decide(
    embeddings: np.ndarray, nearest: np.ndarray, eps: float, *, copy_pairs: tuple[np.ndarray, np.ndarray] | None,
    check_rows: int, force: bool, rng: np.random.Generator,
) -> SemanticCheck:
    """The check from the sample's nearest-neighbour similarities (:func:`nearest_similarity`, -inf where
    a row has no neighbour) and ``rng`` as :func:`check_sample` left it: it draws the known copies and the
    random pairs next, so a caller that measured the nearest neighbours its own way gets the same check."""
    nearest = nearest[nearest > -np.inf]
    copies = _copy_similarity(embeddings, copy_pairs, check_rows, rng)
    random_pairs = _random_pair_similarity(embeddings, check_rows, rng)
    threshold = 1.0 - eps
    measured = len(nearest) >= MIN_SAMPLES
    above = int((nearest > threshold).sum())
    below = int(((nearest > threshold - eps) & (nearest <= threshold)).sum())
    verdict, refused = _verdict(threshold, nearest, above, below, copies)
    if refused and force:
        verdict = "forced (force_semantic): " + verdict.removeprefix("refused: ")
    return SemanticCheck(
        verdict=verdict, ran=not refused or force, refused=refused, forced=refused and force,
        eps=float(eps), threshold=float(threshold), samples=int(len(nearest)),
        nearest_neighbour=_quantiles(nearest), random_pairs=_quantiles(random_pairs),
        above_threshold=round(above / len(nearest), 5) if measured else None,
        just_below_threshold=round(below / len(nearest), 5) if measured else None,
        separated=bool(below < THIN_GAP * above or below < MIN_TAIL) if measured else None,
        known_copies=int(len(copies)), copies=_quantiles(copies) if len(copies) >= MIN_COPIES else None,
        copies_above_threshold=round(float((copies > threshold).mean()), 5) if len(copies) else None,
    )


def nearest_similarity(
    embeddings: np.ndarray, rows: np.ndarray, groups: list[np.ndarray], block_rows: int = 2048
) -> np.ndarray:
    """Cosine similarity of each of ``rows`` (distinct) to its nearest other row within the groups it
    belongs to (-inf for a row alone in its groups)."""
    slot = np.full(len(embeddings), -1, dtype=np.int64)
    slot[rows] = np.arange(len(rows))
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    for members in groups:
        inside = np.flatnonzero(slot[members] >= 0)
        if len(inside) and len(members) > 1:
            chosen = slot[members[inside]]
            best[chosen] = np.maximum(best[chosen], cluster_nearest(normalised(embeddings[members]), members,
                                                                    inside, block_rows))
    return best


def cluster_nearest(unit: np.ndarray, members: np.ndarray, inside: np.ndarray, block_rows: int) -> np.ndarray:
    """For ``members[inside]`` (distinct positions), the cosine similarity to their nearest other member;
    ``unit``: the members' vectors, normalised. Compares ``block_rows`` members at a time."""
    chosen, queries = members[inside], unit[inside]
    best = np.full(len(inside), -np.inf, dtype=np.float32)
    for start in range(0, len(members), block_rows):
        block = members[start : start + block_rows]
        similarity = queries @ unit[start : start + block_rows].T
        similarity[chosen[:, None] == block[None, :]] = -np.inf
        best = np.maximum(best, similarity.max(axis=1))
    return best


def _random_pair_similarity(embeddings: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if len(embeddings) < 2:
        return np.empty(0, dtype=np.float32)
    left, right = rng.integers(0, len(embeddings), count), rng.integers(0, len(embeddings), count)
    distinct = left != right
    return np.einsum(
        "ij,ij->i", normalised(embeddings[left[distinct]]), normalised(embeddings[right[distinct]])
    )


def _copy_similarity(embeddings: np.ndarray, copy_pairs, count: int, rng: np.random.Generator) -> np.ndarray:
    if copy_pairs is None or not len(copy_pairs[0]):
        return np.empty(0, dtype=np.float32)
    left, right = (np.asarray(side, dtype=np.int64) for side in copy_pairs)
    if len(left) > count:
        chosen = rng.choice(len(left), count, replace=False)
        left, right = left[chosen], right[chosen]
    return np.einsum("ij,ij->i", normalised(embeddings[left]), normalised(embeddings[right]))


def _verdict(threshold: float, nearest: np.ndarray, above: int, below: int, copies: np.ndarray) -> tuple[str, bool]:
    """(verdict, refused) by the rule in the module docstring; ``above``/``below``: how many sampled
    nearest neighbours lie above the threshold and within eps below it."""
    count = len(nearest)
    if count < MIN_SAMPLES:
        return (f"warning: not measured: only {count} samples without a known copy have a neighbour in "
                "their cluster", False)
    median, top = np.quantile(nearest, 0.5), np.quantile(nearest, 0.95)
    sampled = f"the {count:,} sampled pictures without a known copy"
    if above > REFUSE_ABOVE * count:
        return (f"refused: 1 - eps = {threshold:.4f} lies inside the bulk of nearest-neighbour similarities: "
                f"{_share(above, count)} of {sampled} have their nearest neighbour above it (median {median:.4f}, "
                f"95th percentile {top:.4f}), so the tier would delete unrelated pictures", True)
    eps = 1 - threshold
    if below >= max(above, MIN_TAIL):
        return (f"refused: 1 - eps = {threshold:.4f} cuts through a continuous run of nearest-neighbour "
                f"similarities, not a gap: {_share(below, count)} of {sampled} have their nearest neighbour just "
                f"below it ({threshold - eps:.4f} to {threshold:.4f}) and {_share(above, count)} above it, so what "
                "the tier would drop cannot be told from what it keeps; choose an eps in a gap of the "
                "nearest-neighbour similarities, or a stronger embedding model", True)
    warnings = []
    if below >= max(THIN_GAP * above, MIN_TAIL):
        warnings.append(f"the gap at 1 - eps = {threshold:.4f} is thin: {_share(below, count)} of the samples have "
                        f"their nearest neighbour within eps below it, {_share(above, count)} above it")
    if len(copies) < MIN_COPIES:
        warnings.append(f"not calibrated: only {len(copies)} pixel-verified copies to compare with (run the near "
                        "tier too)")
    elif (copies > threshold).mean() < 0.5:
        warnings.append(f"1 - eps = {threshold:.4f} misses most pixel-verified copies (median "
                        f"{np.median(copies):.4f}): the tier finds few duplicates")
    if warnings:
        return "warning: " + "; ".join(warnings) + f" ({_share(above, count)} of {sampled} flagged)", False
    return (f"ok: 1 - eps = {threshold:.4f} sits in a gap: {_share(above, count)} of {sampled} have their nearest "
            f"neighbour above it, {_share(below, count)} within eps below it; {(copies > threshold).mean():.0%} of "
            f"the {len(copies):,} pixel-verified copies lie above it", False)


def _share(part: int, count: int) -> str:
    """``part / count`` as a percentage, rounded as the stored fractions are."""
    return f"{round(part / count, 5):.1%}"


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {f"q{round(q * 100):02d}": round(float(v), 5) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))}
