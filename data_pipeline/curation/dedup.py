"""Stage `dedup`: exact (normalized sha256) and near-duplicate (MinHash LSH, datasketch) removal.

Signatures are computed per document (inline or as datatrove tasks); the LSH pass then streams the
documents in input order, so the first copy of every cluster is the one kept (deterministic). A
candidate from the LSH index is confirmed by the MinHash Jaccard estimate before a document is dropped
(Broder 1997; the ~0.8 threshold on 5-word shingles follows Gopher/FineWeb-style MinHash dedup).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.curation.common import FilterWriter, fresh
from data_pipeline.curation.executor import DocumentWorker, map_documents
from recipes import Recipe, to_dict

STAGE, VERSION = "dedup", "1"
MINHASH_SEED = 1  # fixed, with the scheme: signatures from different runs and tasks must be comparable
MINHASH_SCHEME = "affine32"

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lowercase with whitespace runs collapsed: what 'exact duplicate' compares."""
    return _WS.sub(" ", text.lower()).strip()


def shingles(text: str, kind: str, size: int) -> set[str]:
    """Word or character n-grams of the normalized text (the whole text when it is shorter than n)."""
    if kind == "word":
        units = _WORD.findall(text.lower())
        return {" ".join(units[i : i + size]) for i in range(max(1, len(units) - size + 1))}
    flat = normalize(text)
    return {flat[i : i + size] for i in range(max(1, len(flat) - size + 1))}


@dataclass
class SignatureWorker(DocumentWorker):
    shingle: str
    shingle_size: int
    num_perm: int

    def process(self, records: list[dict]) -> list[dict]:
        from datasketch import MinHash

        out = []
        for r in records:
            m = MinHash(num_perm=self.num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)
            m.update_batch([s.encode("utf-8") for s in shingles(r["text"], self.shingle, self.shingle_size)])
            exact = hashlib.sha256(normalize(r["text"]).encode("utf-8")).hexdigest()
            out.append({"exact": exact, "minhash": [int(v) for v in m.hashvalues]})
        return out


def run_dedup(recipe: Recipe, input: Path, output: Path, *, force: bool = False) -> dict:
    """Drop exact and near duplicates of `input` into `output` (first copy kept); returns the manifest."""
    from datasketch import MinHash, MinHashLSH

    cfg = recipe.data.curation.dedup
    params = to_dict(cfg)
    if manifest := fresh(output, stage=STAGE, version=VERSION, params=params, inputs=[input], force=force):
        return manifest
    started = time.time()
    lsh = MinHashLSH(
        threshold=cfg.threshold, num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows) if cfg.bands else None
    )
    first_exact: dict[str, str] = {}  # normalized hash -> id of the kept copy
    kept_minhash: dict[str, MinHash] = {}  # LSH key (input index) -> signature of a kept document
    kept_ids: dict[int, str] = {}  # input index -> id of a kept document
    cluster_sizes: dict[str, int] = {}  # kept id -> copies dropped in its favour
    examples: list[dict] = []

    def decide(pairs):
        for index, (record, sig) in enumerate(pairs):
            doc_id = str(record.get("id", index))
            if cfg.exact and sig["exact"] in first_exact:
                keeper, rule, similarity = first_exact[sig["exact"]], "exact_duplicate", 1.0
            else:
                keeper = None
                if cfg.near:
                    m = MinHash(
                        num_perm=cfg.num_perm,
                        seed=MINHASH_SEED,
                        scheme=MINHASH_SCHEME,
                        hashvalues=sig["minhash"],
                    )
                    scored = [(int(k), m.jaccard(kept_minhash[k])) for k in lsh.query(m)]
                    matches = sorted((i, s) for i, s in scored if s >= cfg.threshold)
                    if matches:  # the earliest kept document wins, whatever order LSH returns candidates in
                        keeper, similarity = kept_ids[matches[0][0]], matches[0][1]
                        rule = "near_duplicate"
                    else:
                        lsh.insert(str(index), m)
                        kept_minhash[str(index)] = m
                if keeper is None:
                    first_exact.setdefault(sig["exact"], doc_id)
                    kept_ids[index] = doc_id
                    yield record, None
                    continue
            cluster_sizes[keeper] = cluster_sizes.get(keeper, 0) + 1
            if len(examples) < 10:
                examples.append(
                    {"kept": keeper, "dropped": doc_id, "rule": rule, "jaccard": round(similarity, 3)}
                )
            yield record, rule

    worker = SignatureWorker(cfg.shingle, cfg.shingle_size, cfg.num_perm)
    pairs = map_documents(
        input,
        worker,
        recipe.data.curation.executor,
        work_dir=Path(output).parent / "_datatrove" / Path(output).stem,
        desc=STAGE,
        resume=functools.partial(run_dedup, recipe, input, output, force=True),
    )
    writer = FilterWriter(STAGE, output, started)
    writer.write(decide(pairs))
    clusters = {
        "clusters_with_duplicates": len(cluster_sizes),
        "largest_cluster": 1 + max(cluster_sizes.values(), default=0),
        "examples": examples,
    }
    return writer.manifest(version=VERSION, params=params, inputs=[input], extra={"clusters": clusters})
