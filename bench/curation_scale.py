"""Curation at growing corpus sizes: per-stage docs/s and peak RSS, 1 vs 2 local workers, vs datatrove's MinHash.

    .venv/bin/python bench/curation_scale.py --sizes 20000 100000 [--workers 1 2] [--tasks 4] [--json OUT]

For each size a synthetic code corpus is built from the interpreter's standard library (30-line windows of
every module; beyond the unique windows, copies whose identifiers carry a variant suffix, so they share no
shingles; `--dup-rate` of the documents are near-duplicates: an earlier document with one line dropped and
one repeated). The stage CLIs then run in a chain, each as its own process, with `executor.kind=local` at
each `--workers` count: heuristics -> dedup -> decontaminate -> shards (per-task tokenization, then the
streaming split, bucketed shuffle and pack; the tokenizer is trained once per size, untimed). The peer, in the same run and on the same dedup input, is datatrove's own
4-step MinHash (signatures -> buckets -> cluster -> filter) on LocalPipelineExecutor with the same workers.

Printed per stage: docs/s (input documents / wall seconds) and the peak RSS of the largest process of that
run (getrusage RUSAGE_CHILDREN of a wrapper around it: the maximum over the stage and its datatrove workers).
Nothing is asserted: see bench/README.md for measured figures and the goals they are read against.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("heuristics", "dedup", "decontaminate", "shards")
WINDOW = 30  # lines per synthetic document
RECENT = 2000
_IDENT = re.compile(r"\b([A-Za-z_]\w*)\b")

# Runs one command and prints the largest resident set of it and its descendants (KiB on Linux).
MEASURE = (
    "import resource, subprocess, sys; "
    "code = subprocess.run(sys.argv[1:]).returncode; "
    "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)"
)

PEER = """
import sys
from pathlib import Path
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
    MinhashDedupSignature)
from dataclasses import replace
from datatrove.utils.hashing import HashConfig
from data_pipeline.curation.dedup import Units, _xxh64, minhash_config
from data_pipeline.curation.corpus import byte_range, read_jsonl_range
from recipes.curation import DedupConfig

src, work, tasks, workers, hash_fc = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

class Read(PipelineStep):  # this task's byte range, as our stages read it
    name = "read"
    def run(self, data=None, rank=0, world_size=1):
        for i, r in enumerate(read_jsonl_range(src, *byte_range(src, rank, world_size), ("text",))):
            yield Document(text=r["text"], id=str(r.get("id", i)))

class Count(PipelineStep):
    name = "count"
    def run(self, data=None, rank=0, world_size=1):
        n = sum(1 for _ in data)
        (work / f"kept-{rank}").write_text(str(n))
        return iter(())

if __name__ == "__main__":
    # The dedup stage's default MinHash parameters (bands x rows, 5-grams, digits kept). Shingle hash: sha1,
    # the one that works on str in datatrove 0.10.1 as shipped, or (xxhash) the stage's xxhash64 of UTF-8.
    dd = DedupConfig()
    cfg = minhash_config(dd)
    if hash_fc == "sha1":
        cfg = replace(cfg, hash_config=HashConfig(hash_fc="sha1", precision=64))
    sig = MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg, language=Units(dd.shingle, dd.shingle_size))
    if hash_fc == "xxhash":
        sig._hash_func = _xxh64
    run = lambda pipe, t, name: LocalPipelineExecutor(pipeline=pipe, tasks=t, workers=workers,
        logging_dir=str(work / "logs" / name), skip_completed=False).run()
    run([Read(), sig], tasks, "sig")
    run([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)],
        cfg.num_buckets, "buckets")
    run([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=cfg)], 1, "cluster")
    run([Read(), MinhashDedupFilter(input_folder=str(work / "remove")), Count()], tasks, "filter")
    print("KEPT", sum(int((work / f"kept-{r}").read_text()) for r in range(tasks)))
"""


def stdlib_windows() -> list[str]:
    """30-line windows of every stdlib module outside tests and site-packages, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "site-packages", "idle_test") for p in rel):
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        for i in range(0, len(lines) - WINDOW + 1, WINDOW):
            text = "\n".join(lines[i : i + WINDOW]) + "\n"
            if len(_IDENT.findall(text)) >= 40:  # skip near-empty windows (license blocks, blank runs)
                out.append(text)
    return out


def build_corpus(path: Path, n: int, dup_rate: float, seed: int) -> None:
    rng = random.Random(seed)
    pool = stdlib_windows()
    rng.shuffle(pool)
    docs: list[str] = []  # the last RECENT originals: near-duplicate sources (keeps 1M-doc builds small)
    made = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if docs and rng.random() < dup_rate:
                lines = rng.choice(docs).splitlines()
                drop, repeat = rng.randrange(len(lines)), rng.randrange(len(lines))
                text = "\n".join(lines[:drop] + lines[drop + 1 :] + [lines[repeat]]) + "\n"
            else:
                variant, base = divmod(made, len(pool))
                made += 1
                text = pool[base] if not variant else _IDENT.sub(rf"\1_v{variant}", pool[base])
                if len(docs) < RECENT:
                    docs.append(text)
                else:  # a ring: replace the oldest
                    docs[made % RECENT] = text
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")


def measured(cmd: list[str], log: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS MiB of the command's largest process, its stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], cwd=REPO, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    log.write_text(proc.stdout + proc.stderr)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MAXRSS"))
    _, kib, code = line.split()
    if code != "0":
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); see {log}")
    return wall, int(kib) // 1024, proc.stdout


def stage_cmd(stage: str, src: Path, out: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "data_pipeline", stage, "--input", str(src), "--output", str(out), "--force"]
    return cmd + overrides


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run_size(n: int, args, root: Path) -> list[dict]:
    work = root / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    build_corpus(corpus, n, args.dup_rate, args.seed)
    base = [
        f"run_dir={work / 'run'}",
        f"benchmarks_dir={args.benchmarks}",
        "data.curation.tokenizer.vocab_size=4096",
    ]
    tok = work / "tok"
    if "shards" in args.stages:
        subprocess.run(
            [sys.executable, "-m", "data_pipeline", "tokenizer", "--input", str(corpus), "--output", str(tok),
             *base, "data.curation.tokenizer.max_documents=5000"],
            cwd=REPO, check=True, capture_output=True,
        )  # fmt: skip
    rows = []
    for workers in args.workers:
        ex = [
            "data.curation.executor.kind=local",
            f"data.curation.executor.tasks={args.tasks}",
            f"data.curation.executor.workers={workers}",
        ]
        d = work / f"w{workers}"
        shutil.rmtree(
            d, ignore_errors=True
        )  # nothing reused from an earlier run (stages resume from their parts)
        d.mkdir()
        src = dedup_in = corpus
        for stage in args.stages:
            out = d / ("shards" if stage == "shards" else f"{stage}.jsonl")
            extra = ["--tokenizer", str(tok)] if stage == "shards" else []
            if stage == "dedup":
                dedup_in = src
            docs_in = count_lines(src)
            wall, rss, _ = measured(stage_cmd(stage, src, out, base + ex) + extra, d / f"{stage}.log")
            kept = count_lines(out) if out.suffix == ".jsonl" else None
            rows.append({"n": n, "workers": workers, "stage": stage, "docs_in": docs_in, "docs_out": kept,
                         "seconds": round(wall, 2), "docs_per_s": round(docs_in / wall, 1), "peak_rss_mib": rss})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            if out.suffix == ".jsonl":
                src = out
        if "dedup" not in args.stages or args.no_peer:
            continue
        peer_dir = d / "peer"
        shutil.rmtree(peer_dir, ignore_errors=True)  # the peer never reuses an earlier run's files
        script = work / "peer.py"
        script.write_text(PEER)
        wall, rss, stdout = measured(
            [
                sys.executable,
                str(script),
                str(dedup_in),
                str(peer_dir),
                str(args.tasks),
                str(workers),
                args.peer_hash,
            ],
            d / "peer.log",
        )
        kept = int(next(x for x in stdout.splitlines() if x.startswith("KEPT")).split()[1])
        docs_in = count_lines(dedup_in)
        rows.append({"n": n, "workers": workers, "stage": "datatrove-minhash", "docs_in": docs_in, "docs_out": kept,
                     "seconds": round(wall, 2), "docs_per_s": round(docs_in / wall, 1), "peak_rss_mib": rss})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> str:
    """Markdown: per (size, stage) docs/s and RSS at each worker count, 2-vs-1 scaling, dedup vs datatrove."""
    lines = [
        "| docs | stage | workers | docs in -> out | docs/s | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['stage']} | {r['workers']} | {r['docs_in']} -> {r['docs_out'] if r['docs_out'] is not None else '-'} "
            f"| {r['docs_per_s']} | {r['peak_rss_mib']} |"
        )
    by = {(r["n"], r["stage"], r["workers"]): r for r in rows}
    lines.append("")
    for n in sorted({r["n"] for r in rows}):
        for w in sorted({r["workers"] for r in rows}):
            ours, peer = by.get((n, "dedup", w)), by.get((n, "datatrove-minhash", w))
            if ours and peer:
                removed = ours["docs_in"] - ours["docs_out"], peer["docs_in"] - peer["docs_out"]
                lines.append(
                    f"- {n} docs, {w} worker(s): dedup / datatrove docs/s = {ours['docs_per_s'] / peer['docs_per_s']:.2f}x; "
                    f"removed {removed[0]} vs {removed[1]}"
                )
        for stage in (*STAGES, "datatrove-minhash"):
            one, two = by.get((n, stage, 1)), by.get((n, stage, 2))
            if one and two:
                lines.append(
                    f"- {n} docs, {stage}: 2 workers / 1 worker docs/s = {two['docs_per_s'] / one['docs_per_s']:.2f}x"
                )
        ours = [r for r in rows if r["n"] == n and r["stage"] in STAGES]
        largest = max(ours, key=lambda r: r["peak_rss_mib"])
        chain = {
            w: sum(r["seconds"] for r in ours if r["workers"] == w)
            for w in sorted({r["workers"] for r in ours})
        }
        lines.append(
            f"- {n} docs: largest process {largest['peak_rss_mib']} MiB ({largest['stage']}, {largest['workers']} "
            f"worker(s)); chain wall seconds by workers {chain}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tasks", type=int, default=4, help="datatrove tasks per stage")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="chain these (in order); dedup adds the peer",
    )
    parser.add_argument(
        "--peer-hash",
        choices=["sha1", "xxhash"],
        default="sha1",
        help="the peer's shingle hash: sha1 (datatrove 0.10.1 as shipped) or the stage's xxhash64 of UTF-8",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip datatrove's own MinHash run")
    parser.add_argument("--dup-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benchmarks", default=str(REPO.parent / "shared" / "benchmarks"))
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "curation_scale")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    rows = [row for n in args.sizes for row in run_size(n, args, args.work)]
    print(summary(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
