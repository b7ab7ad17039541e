"""Stage `dedup`: exact and near-duplicate removal on datatrove's own MinHash blocks, state kept on disk.

Four datatrove phases under a work dir beside the output (`executor.kind` picks inline / local / slurm):

1. signatures: each task reads its own share of the input (a byte range of a JSONL file or its own
   files of a shard directory, corpus.py), writes MinHash signatures per band
   (`MinhashDedupSignature`, shingles hashed with xxhash64) and the 8-byte hash of every document's
   normalized text (`hashes/<rank>`);
2. buckets: one task per band finds documents with an identical band (`MinhashDedupBuckets`);
3. cluster: union-find over those pairs only (`MinhashDedupCluster`, one task, O(duplicates));
   then, in the same task, keep-first (ours, O(duplicates)): in every cluster the earliest document in
   input order stays (datatrove's own choice follows union-by-size, not input order); a dropped copy
   whose normalized hash equals an earlier member's is an `exact_duplicate`, else a `near_duplicate`;
4. filter: each task drops its removals (`MinhashDedupFilter`) and writes its kept records to
   `parts/<rank>.jsonl` (with `<rank>.shards.json`: how many lines of it belong to each input shard); the
   driver concatenates the parts in rank order, i.e. input order, into one JSONL file or into one file per
   input shard of a directory output.

Exact copies share every shingle, so all bands collide and MinHash always clusters them; no pass keeps a
set of all hashes. Bands x rows follow FineWeb's/datatrove's banding (Broder 1997); with `bands: 0` they
are picked for `threshold` as datasketch does. There is no Jaccard confirmation step: a pair is a
duplicate when one band matches, so the effective cut is the S-curve 1 - (1 - s^rows)^bands.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import shutil
import struct
import time
from array import array
from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path

import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from data_pipeline.curation.common import fresh, work_dir
from data_pipeline.curation.corpus import OutputShards, read_input, task_records
from data_pipeline.curation.executor import FINISH_ONLY_ENV, FinishStage, Submitted, slurm_options
from recipes import Recipe, to_dict
from recipes.curation import DedupConfig, ExecutorConfig
from stagekit.io import StageError, atomic_path, fingerprint, write_json, write_manifest

STAGE, VERSION = "dedup", "3"  # 3: directory inputs/outputs (parts carry per-shard line counts)
MINHASH_SEED = 1  # fixed: signatures from different tasks and runs must be comparable
HASH = struct.Struct("<8s")  # per document: the first 8 bytes of sha256(normalized text)
RULES = ("exact_duplicate", "near_duplicate")
MAX_EXAMPLES = 10

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lowercase with whitespace runs collapsed: what 'exact duplicate' compares."""
    return " ".join(text.lower().split())


def bands_rows(cfg: DedupConfig) -> tuple[int, int]:
    """The LSH banding: as set, or chosen for `threshold` within `num_perm` hashes (datasketch's optimizer)."""
    if cfg.bands:
        return cfg.bands, cfg.rows
    from datasketch.lsh import _optimal_param

    return _optimal_param(cfg.threshold, cfg.num_perm, 0.5, 0.5)


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    bands, rows = bands_rows(cfg)
    return MinhashConfig(
        n_grams=cfg.shingle_size,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=MINHASH_SEED,
        # numbers stay as written (datatrove maps digits to 0 for web prose): constants distinguish code
        norm_config=TextNormConfig(norm_numbers=False),
        hash_config=HashConfig(hash_fc="xxhash", precision=64),
    )


class Units(WordTokenizer):
    """Shingle units of datatrove's simplified text: words or characters (no spaCy, nothing downloaded).

    A text shorter than n units is padded to one n-gram (the whole text), so short exact copies still match.
    """

    def __init__(self, kind: str, size: int):
        super().__init__("code")
        self.kind, self.size = kind, size

    def word_tokenize(self, text: str) -> list[str]:
        units = _WORD.findall(text) if self.kind == "word" else list(text)
        return units + [""] * (self.size - len(units)) if 0 < len(units) < self.size else units

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def _xxh64(ngram: str) -> int:
    return xxhash.xxh64_intdigest(ngram.encode("utf-8"))


class Signatures(MinhashDedupSignature):
    """datatrove's signature step hashing shingles with xxhash64 of their UTF-8 bytes.

    That is its configured default, but 0.10.1 hands xxhash a str and fails; the working alternative, sha1,
    costs ~10x more per shingle and is most of the stage's time.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._hash_func = _xxh64


class ReadRange(PipelineStep):
    """This task's share of the input as Documents (record and input shard in metadata, id = index in the
    task).

    With `hashes_dir`, also writes the normalized-text hash of every document, in order, to hashes/<rank>.
    """

    name, type = "read range", "📖 - READER"

    def __init__(self, path: str, hashes_dir: str | None = None):
        super().__init__()
        self.path, self.hashes_dir = path, hashes_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        records = task_records(self.path, rank, world_size, ("text",))
        if self.hashes_dir is None:
            for i, (shard, record) in enumerate(records):
                yield Document(text=record["text"], id=str(i), metadata={"record": record, "shard": shard})
            return
        with atomic_path(Path(self.hashes_dir) / f"{rank:05d}") as tmp, open(tmp, "wb") as f:
            for i, (shard, record) in enumerate(records):
                f.write(HASH.pack(hashlib.sha256(normalize(record["text"]).encode("utf-8")).digest()))
                self.stat_update("documents")
                yield Document(text=record["text"], id=str(i), metadata={"record": record, "shard": shard})


class KeepFirst(PipelineStep):
    """One task: per MinHash cluster keep the earliest member, name the rule of each drop, write removals."""

    name, type = "keep first", "🫂 - DEDUP"

    def __init__(self, clusters_dir: str, hashes_dir: str, remove_dir: str, exact: bool, near: bool):
        super().__init__()
        self.clusters_dir, self.hashes_dir, self.remove_dir = clusters_dir, hashes_dir, remove_dir
        self.exact, self.near = exact, near

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        # (task, index, cluster) of every clustered document as flat arrays, 12 bytes each: this runs in
        # the process that just held datatrove's union-find, whose peak it should not add to.
        parts = [
            (int(path.stem), np.fromfile(path, dtype="<u4").reshape(-1, 2))
            for path in sorted(Path(self.clusters_dir).glob("*.clusters"))
        ]
        task = np.concatenate([np.full(len(p), t, np.uint32) for t, p in parts] or [np.empty(0, np.uint32)])
        doc, cluster = (
            np.concatenate([p[:, k] for _, p in parts] or [np.empty(0, np.uint32)]) for k in (0, 1)
        )
        order = np.lexsort((doc, task, cluster))  # by cluster, then (task, index), i.e. input order
        task, doc, cluster = task[order], doc[order], cluster[order]
        bounds = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1], True]).tolist()
        removals: dict[int, array] = defaultdict(lambda: array("I"))
        drops: Counter[str] = Counter()
        examples: list[tuple] = []  # the MAX_EXAMPLES first drops in input order
        clusters, largest = 0, 1
        hash_files = {}
        try:
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                group = list(zip(task[lo:hi].tolist(), doc[lo:hi].tolist()))
                dropped_before = sum(drops.values())
                first_of_hash: dict[bytes, tuple[int, int]] = {}
                for i, (t, d) in enumerate(group):
                    f = hash_files.get(t) or hash_files.setdefault(
                        t, open(Path(self.hashes_dir) / f"{t:05d}", "rb")
                    )
                    f.seek(d * HASH.size)
                    digest = f.read(HASH.size)
                    earlier = first_of_hash.setdefault(digest, (t, d))
                    if i and self.exact and earlier != (t, d):
                        rule, keeper = "exact_duplicate", earlier
                    elif i and self.near:
                        rule, keeper = "near_duplicate", group[0]
                    else:
                        continue
                    removals[t].append(d)
                    drops[rule] += 1
                    bisect.insort(examples, (t, d, *keeper, rule))
                    del examples[MAX_EXAMPLES:]
                if sum(drops.values()) > dropped_before:
                    clusters, largest = clusters + 1, max(largest, len(group))
        finally:
            for f in hash_files.values():
                f.close()
        out = Path(self.remove_dir)
        out.mkdir(parents=True, exist_ok=True)
        for task, docs in removals.items():
            with atomic_path(out / f"{task:06d}.remove") as tmp:  # datatrove's filter reads <rank:06d>.remove
                Path(tmp).write_bytes(np.sort(np.frombuffer(docs, dtype=np.uint32)).astype("<u4").tobytes())
        summary = {
            "drops": dict(sorted(drops.items())),
            "clusters_with_duplicates": clusters,
            "largest_cluster": largest,
            "examples": examples,
        }
        write_json(out / "summary.json", summary)
        return iter(())


class WriteKept(PipelineStep):
    """Kept records of this task to parts/<rank>.jsonl and their count per input shard, as runs of
    [shard, lines], to parts/<rank>.shards.json (written first: the part's rename marks the task done)."""

    name, type = "write kept", "💽 - WRITER"

    def __init__(self, parts_dir: str):
        super().__init__()
        self.parts_dir = parts_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        runs: list[list[int]] = []
        with (
            atomic_path(Path(self.parts_dir) / f"{rank:05d}.jsonl") as tmp,
            open(tmp, "w", encoding="utf-8") as f,
        ):
            for doc in data:
                shard = doc.metadata["shard"]
                if not runs or runs[-1][0] != shard:
                    runs.append([shard, 0])
                runs[-1][1] += 1
                f.write(json.dumps(doc.metadata["record"], ensure_ascii=False) + "\n")
                self.stat_update("kept")
            write_json(Path(self.parts_dir) / f"{rank:05d}.shards.json", runs)
        return iter(())


class ExampleIds(PipelineStep):
    """Records the ids of the documents named by the keep-first examples (a handful) for the manifest."""

    name, type = "example ids", "🔖 - TAGGER"

    def __init__(self, remove_dir: str):
        super().__init__()
        self.remove_dir = remove_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        summary = json.loads((Path(self.remove_dir) / "summary.json").read_text(encoding="utf-8"))
        wanted = {(t, d) for ex in summary["examples"] for t, d in (ex[0:2], ex[2:4]) if t == rank}
        found = {}
        for doc in data:
            if (rank, int(doc.id)) in wanted:
                found[doc.id] = str(doc.metadata["record"].get("id", ""))
            yield doc
        write_json(Path(self.remove_dir) / f"ids-{rank:05d}.json", found)


def _phases(cfg: DedupConfig, src: Path, work: Path, tasks: int) -> list[tuple[str, list, int]]:
    mh = minhash_config(cfg)
    d = {k: str(work / k) for k in ("sigs", "hashes", "buckets", "clusters", "remove", "parts")}
    signature = Signatures(output_folder=d["sigs"], config=mh, language=Units(cfg.shingle, cfg.shingle_size))
    return [
        ("signatures", [ReadRange(str(src), d["hashes"]), signature], tasks),
        ("buckets", [MinhashDedupBuckets(d["sigs"], d["buckets"], config=mh)], mh.num_buckets),
        (
            "cluster",
            [
                MinhashDedupCluster(d["buckets"], d["clusters"], config=mh, save_cluster_id=True),
                KeepFirst(d["clusters"], d["hashes"], d["remove"], cfg.exact, cfg.near),
            ],
            1,
        ),
        (
            "filter",
            [
                ReadRange(str(src)),
                ExampleIds(d["remove"]),
                MinhashDedupFilter(d["remove"]),
                WriteKept(d["parts"]),
            ],
            tasks,
        ),
    ]


def _logs(work: Path, phase: str) -> Path:
    # logs/ is the filter phase's, the one with a part per task (as for the other stages' map step)
    return work / ("logs" if phase == "filter" else f"logs-{phase}")


def _run_inline(pipeline: list, tasks: int) -> None:
    for rank in range(tasks):
        data = None
        for step in pipeline:
            data = step(data, rank, tasks)
        for _ in data or ():
            pass


def _slurm_chain(phases, executor: ExecutorConfig, work: Path, resume) -> None:
    from datatrove.executor import SlurmPipelineExecutor

    common = slurm_options(executor)
    job = None
    for name, pipeline, tasks in [*phases, ("finish", [FinishStage(resume)], 1)]:
        job = SlurmPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            depends=job,
            job_name=f"dedup-{name}",
            logging_dir=str(_logs(work, name)),
            skip_completed=name != "finish",
            **common,
        )
    job.run()  # launches its dependencies first
    raise Submitted(f"submitted the Slurm dedup chain for {work}; its last job writes the output")


def _run_phases(phases, executor: ExecutorConfig, work: Path, src: Path, resume) -> None:
    if executor.kind == "slurm":
        if os.environ.get(FINISH_ONLY_ENV):  # the finish job: the chain ran; the caller checks its parts
            return
        _slurm_chain(phases, executor, work, resume)
    for name, pipeline, tasks in phases:
        try:
            if executor.kind == "inline":
                _run_inline(pipeline, tasks)
            else:
                from datatrove.executor import LocalPipelineExecutor

                LocalPipelineExecutor(
                    pipeline=pipeline,
                    tasks=tasks,
                    # one task runs in this process: no pool to start and no imports to repeat
                    workers=tasks if executor.workers == -1 else min(executor.workers, tasks),
                    logging_dir=str(_logs(work, name)),
                    skip_completed=True,  # a re-run redoes only the tasks that did not finish
                ).run()
        except StageError:
            raise
        except Exception as e:
            for _ in read_input(src, ("text",)):  # bad input raises its file:line error here, in the driver
                pass
            raise StageError(f"{work}: dedup phase {name!r} failed ({e!r}); see {_logs(work, name)}") from e


def run_dedup(recipe: Recipe, input: Path, output: Path, *, force: bool = False) -> dict:
    """Drop exact and near duplicates of `input` into `output` (earliest copy kept); returns the manifest."""
    cfg = recipe.data.curation.dedup
    executor = recipe.data.curation.executor
    params = to_dict(cfg)
    if manifest := fresh(output, stage=STAGE, version=VERSION, params=params, inputs=[input], force=force):
        return manifest
    started = time.time()
    src, output = Path(input), Path(output)
    work = work_dir(output)
    if executor.logging_dir:  # one shared root (e.g. a cluster filesystem): a subfolder per stage output
        tag = hashlib.sha256(str(work.resolve()).encode()).hexdigest()[:10]
        work = Path(executor.logging_dir) / f"{output.stem}-{STAGE}-{tag}"
    tasks = 1 if executor.kind == "inline" else executor.tasks
    spec = {
        "version": VERSION,
        "input_sha256": fingerprint(src),
        "tasks": tasks,
        "params": params,
        "minhash": str(minhash_config(cfg)),  # n-grams, bands, rows and shingle hash
    }
    spec_path = work / "spec.json"
    if not (spec_path.is_file() and json.loads(spec_path.read_text(encoding="utf-8")) == spec):
        shutil.rmtree(work, ignore_errors=True)  # other input or parameters: nothing here is reusable
        work.mkdir(parents=True)
        write_json(spec_path, spec)
    for sub in ("hashes", "parts", "remove"):
        (work / sub).mkdir(exist_ok=True)
    resume = lambda: run_dedup(recipe, input, output, force=True)  # noqa: E731 - the Slurm finish job
    _run_phases(_phases(cfg, src, work, tasks), executor, work, src, resume)

    seen = sum((work / "hashes" / f"{r:05d}").stat().st_size // HASH.size for r in range(tasks))
    if seen == 0:
        raise StageError(f"[{STAGE}] the input {src} is empty; nothing to write to {output}")
    kept = 0
    with OutputShards(output, src) as out:
        for r in range(tasks):
            part_path = work / "parts" / f"{r:05d}.jsonl"
            if not part_path.is_file():
                raise StageError(f"{part_path}: dedup task {r} did not finish; see {_logs(work, 'filter')}")
            runs = json.loads((work / "parts" / f"{r:05d}.shards.json").read_text(encoding="utf-8"))
            with open(part_path, "rb") as part:
                for shard, lines in runs:
                    out.file(shard).writelines(islice(part, lines))
                    kept += lines
    summary = json.loads((work / "remove" / "summary.json").read_text(encoding="utf-8"))
    ids = {}
    for r in range(tasks):
        ids.update(
            {
                (r, int(k)): v
                for k, v in json.loads((work / "remove" / f"ids-{r:05d}.json").read_text()).items()
            }
        )
    examples = [
        {"kept": ids.get((kt, kd)), "dropped": ids.get((t, d)), "rule": rule}
        for t, d, kt, kd, rule in summary.pop("examples")
    ]
    drops = summary.pop("drops")
    if seen - kept != sum(drops.values()):
        raise StageError(f"{work}: {seen - kept} documents dropped but {drops} planned; re-run with --force")
    bands, rows = bands_rows(cfg)
    clusters = {**summary, "examples": examples}
    return write_manifest(
        output,
        stage=STAGE,
        version=VERSION,
        params=params,
        inputs=[src],
        counts={"in": seen, "out": kept, "dropped": seen - kept},
        drops=drops,
        started=started,
        extra={"clusters": clusters, "lsh": {"bands": bands, "rows": rows}},
    )
