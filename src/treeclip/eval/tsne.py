"""Intrinsic plots: 2-D t-SNE of image embeddings coloured by taxon, drill-down style.

Level 0 embeds every image and colours it by `start_rank`; each further level re-embeds only the images of
the largest group of the previous level and colours them one rank lower (e.g. all images by kingdom, then
the largest kingdom by phylum, then its largest phylum by class). Up to `max_groups` groups get their own
colour, the rest are grey ("other").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from treeclip.atomic import atomic_path
from treeclip.taxonomy import RANK_NAMES, Rank, Taxon

MIN_POINTS = 5


def embed_2d(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE coordinates ``[n, 2]`` (perplexity capped below a third of the sample count).

    Barnes-Hut runs with one OpenMP thread: with torch loaded, two OpenMP runtimes otherwise spin against
    each other and make it ~50x slower on a small CPU.
    """
    from sklearn.manifold import TSNE  # noqa: PLC0415 - heavy; imported when used
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - ships with scikit-learn

    perplexity = max(1.0, min(perplexity, (len(features) - 1) / 3))
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def _group_names(taxa: Sequence[Taxon], rank: Rank) -> list[str]:
    return [taxon.lineage[rank] or "(unknown)" for taxon in taxa]


def _plot(coords: np.ndarray, groups: list[str], *, title: str, path: Path, max_groups: int) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    top = [name for name, _ in Counter(groups).most_common(max_groups)]
    figure, axes = plt.subplots(figsize=(7, 6))
    other = np.array([g not in top for g in groups])
    if other.any():
        axes.scatter(coords[other, 0], coords[other, 1], s=8, c="lightgrey", label="other")
    colours = plt.get_cmap("tab10" if len(top) <= 10 else "tab20")
    for i, name in enumerate(top):
        mask = np.array([g == name for g in groups])
        axes.scatter(coords[mask, 0], coords[mask, 1], s=10, color=colours(i % colours.N), label=name)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(fontsize=7, markerscale=1.5, loc="best")
    figure.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def drilldown_plots(features: np.ndarray, taxa: Sequence[Taxon], out_dir: str | Path, *,
                    start_rank: str = "kingdom", levels: int = 3, max_groups: int = 10, seed: int = 0,
                    prefix: str = "tsne", model: str = "") -> list[Path]:
    """Write up to `levels` PNG plots (``{prefix}_{level}_{rank}.png``) into `out_dir`; returns their paths.
    `model` names the model in each plot's title."""
    features, taxa = np.asarray(features), list(taxa)
    rank, inside, written = Rank.parse(start_rank), "all images", []
    for level in range(levels):
        if len(taxa) < MIN_POINTS:
            break
        groups = _group_names(taxa, rank)
        path = Path(out_dir) / f"{prefix}_{level}_{RANK_NAMES[rank]}.png"
        _plot(embed_2d(features, seed=seed), groups, max_groups=max_groups, path=path,
              title=f"{model + ': ' if model else ''}t-SNE of {len(taxa)} images ({inside}), "
                    f"coloured by {RANK_NAMES[rank]}")
        written.append(path)
        if rank == Rank.SPECIES:
            break
        largest = Counter(groups).most_common(1)[0][0]
        keep = np.array([g == largest for g in groups])
        features, taxa = features[keep], [t for t, k in zip(taxa, keep) if k]
        rank, inside = Rank(rank + 1), f"{RANK_NAMES[rank]} {largest}"
    return written
