"""Stage `sources`: gather the raw code corpus as JSONL ({id, text, source, path}).

The tiny recipe's stand-in for The Stack (Phi-1 Sec. 2) is the interpreter's standard library: real,
varied Python, available offline. Local JSONL/Parquet/text files and streamed Hugging Face datasets
(online only) are read the same way, so a full-size recipe only changes the `sources` section.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import random
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from data_pipeline.curation.common import curation_dir, fresh
from data_pipeline.curation.corpus import parquet_rows
from recipes import Recipe, to_dict
from recipes.curation import FileSource, HubSource, SourcesConfig, StdlibSource
from stagekit.io import StageError, atomic_path, read_jsonl, write_manifest

STAGE, VERSION = "sources", "1"


def stdlib_files(cfg: StdlibSource, seed: int) -> list[tuple[str, Path]]:
    """(relative name, path) of the selected standard-library files: sorted, then a seeded sample."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    if cfg.include_site_packages:
        roots.append(Path(sysconfig.get_paths()["purelib"]))
    found = []
    for root in roots:
        for path in sorted(root.glob(cfg.glob)):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, pat) for pat in cfg.exclude):
                found.append((f"{root.name}/{rel}", path))
    if cfg.max_files and len(found) > cfg.max_files:
        found = sorted(random.Random(seed).sample(found, cfg.max_files))
    return found


def iter_stdlib(cfg: StdlibSource, seed: int, skipped: Counter) -> Iterator[dict]:
    for name, path in stdlib_files(cfg, seed):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped["unreadable"] += 1
            continue
        yield {"id": f"stdlib:{name}", "text": text, "source": "stdlib", "path": name}


def _format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(path.suffix.lower(), "text")


def iter_files(cfg: FileSource, skipped: Counter) -> Iterator[dict]:
    paths = sorted(Path(p) for p in glob.glob(cfg.path, recursive=True))
    if not paths:
        raise StageError(f"sources.files '{cfg.name}': no file matches {cfg.path}")
    n = 0
    for path in paths:
        fmt = _format(path, cfg.format)
        if fmt == "jsonl":
            rows = ((i, r) for i, r in enumerate(read_jsonl(path, [cfg.text_field])))
        elif fmt == "parquet":
            rows = enumerate(parquet_rows(path, (cfg.text_field,)))
        else:
            try:
                rows = iter([(0, {cfg.text_field: path.read_text(encoding="utf-8")})])
            except UnicodeDecodeError:
                skipped["unreadable"] += 1
                continue
        for i, row in rows:
            text = row[cfg.text_field]
            if not isinstance(text, str):
                raise StageError(f"{path}: record {i} field '{cfg.text_field}' is not a string")
            meta = {k: v for k, v in row.items() if k != cfg.text_field and _jsonable(v)}
            yield {
                **meta,
                "id": f"{cfg.name}:{path.name}:{i}",
                "text": text,
                "source": cfg.name,
                "path": str(path),
            }
            n += 1
            if cfg.max_records and n >= cfg.max_records:
                return


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def iter_hub(cfg: HubSource) -> Iterator[dict]:
    """Stream a Hugging Face dataset by name (network), or a local dataset directory through the same
    `datasets` streaming path (that is how the tests exercise it offline)."""
    import datasets

    try:
        stream = datasets.load_dataset(cfg.dataset, cfg.config or None, split=cfg.split, streaming=True)
        for i, row in enumerate(stream):
            if cfg.max_records and i >= cfg.max_records:
                return
            if not isinstance(row.get(cfg.text_field), str):
                raise StageError(f"hub dataset {cfg.dataset}: row {i} has no string field '{cfg.text_field}'")
            yield {
                "id": f"{cfg.name}:{i}",
                "text": row[cfg.text_field],
                "source": cfg.name,
                "path": row.get("path", ""),
            }
    except StageError:
        raise
    except Exception as e:  # network, auth or a missing dataset: one clear line instead of a traceback
        raise StageError(
            f"sources.hub '{cfg.name}': cannot stream {cfg.dataset} ({type(e).__name__}: {e})"
        ) from e


def iter_sources(cfg: SourcesConfig, seed: int, skipped: Counter) -> Iterator[dict]:
    if cfg.stdlib.enabled:
        yield from iter_stdlib(cfg.stdlib, seed, skipped)
    for file_cfg in cfg.files:
        yield from iter_files(file_cfg, skipped)
    for hub_cfg in cfg.hub:
        yield from iter_hub(hub_cfg)


def run_sources(recipe: Recipe, output: Path | None = None, *, force: bool = False) -> dict:
    """Write the raw code corpus (default runs/<name>/data/curation/corpus.jsonl); returns its manifest."""
    cfg = recipe.data.curation.sources
    output = Path(output or curation_dir(recipe) / "corpus.jsonl")
    file_inputs = sorted({Path(p) for f in cfg.files for p in glob.glob(f.path, recursive=True)})
    # The stdlib is identified by the interpreter version rather than by hashing ~700 files.
    params = {**to_dict(cfg), "seed": recipe.seed, "python": sys.version}
    if manifest := fresh(
        output, stage=STAGE, version=VERSION, params=params, inputs=file_inputs, force=force
    ):
        return manifest
    started = time.time()
    skipped: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    seen_ids: set[str] = set()
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in tqdm(
            iter_sources(cfg, recipe.seed, skipped), desc=STAGE, unit="doc", dynamic_ncols=True
        ):
            if not record["text"].strip():
                skipped["empty"] += 1
            elif cfg.max_chars and len(record["text"]) > cfg.max_chars:
                skipped["too_long"] += 1
            elif record["id"] in seen_ids:
                skipped["duplicate_id"] += 1
            else:
                seen_ids.add(record["id"])
                per_source[record["source"]] += 1
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if not per_source:
            raise StageError(
                f"[{STAGE}] no documents found (skipped: {dict(skipped)}); check data.curation.sources"
            )
    return write_manifest(
        output,
        stage=STAGE,
        version=VERSION,
        params=params,
        inputs=file_inputs,
        counts={"out": sum(per_source.values()), "per_source": dict(sorted(per_source.items()))},
        drops=dict(sorted(skipped.items())),
        started=started,
    )
