"""Cluster-scale generation on datatrove's InferenceRunner (`data.generation.inference.runner: datatrove`).

The prompt stream is validated (ids as in the builtin runner) and dealt round-robin into one JSONL shard per
task; datatrove's JSONL reader feeds each task's shard to an InferenceRunner that talks to one server per task
(`vllm`/`sglang`, started by datatrove on teacher.model), to an existing server or fleet (`endpoint`, at
teacher.base_urls[0]) or to datatrove's instant `dummy` server. Our rollout builds the chat request from the
record; our writer adapter writes the builtin runner's record format, so `finish_output` merges either.
Resume is datatrove's: the executor skips finished tasks, and a restarted task replays its chunk checkpoints
(`records_per_chunk` documents per chunk), so a kill -9 redoes at most the requests in flight. datatrove's
per-request sqlite cache (one commit per request, drained before each chunk closes) is off unless
`inference.request_cache`: our rollout sends one request per document, written to the chunk checkpoint as soon
as it returns, so the cache would only hold what the checkpoint already holds; it cut client throughput 4x
against an instant server (bench/README.md, "generation_scale.py").
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from data_pipeline.generation.runner import RunStats, iter_parts, stream_prompts
from data_pipeline.teachers.base import Sampling
from recipes import Recipe
from stagekit.io import StageError, atomic_path

# datatrove[inference] without its GPU servers: the JSONL reader/writer (orjson) and the checkpoints (aiosqlite,
# aiofiles). vLLM/SGLang are only needed on the machines that start them.
NEEDS = ("orjson", "aiosqlite", "aiofiles")


def _check_dependencies() -> None:
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise StageError(
            f"data.generation.inference.runner=datatrove needs {', '.join(missing)} (datatrove[inference]); "
            "install them, or use runner: builtin"
        )


def shard_prompts(files: list[Path], sampling: Sampling, directory: Path, tasks: int) -> int:
    """Validated prompt records (with ids) dealt round-robin into `tasks` shards; written once, atomically."""
    if directory.is_dir():
        return sum(1 for path in directory.glob("*.jsonl") for _ in path.open(encoding="utf-8"))
    n = 0
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        handles = [open(tmp / f"{k:05d}.jsonl", "w", encoding="utf-8") for k in range(tasks)]  # noqa: SIM115
        try:
            for n, record in enumerate(stream_prompts(files, sampling), 1):
                record.pop("_where")
                handles[(n - 1) % tasks].write(json.dumps(record, ensure_ascii=False) + "\n")
        finally:
            for h in handles:
                h.close()
    return n


def _reader_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    return {"text": data["messages"][-1]["content"], "id": data["id"], "metadata": data}


def _writer_adapter(self, document) -> dict:
    """The builtin runner's record: the prompt record, then completion, tokens, teacher and sampling."""
    meta = dict(document.metadata)
    result = meta.pop("rollout_results")[0]
    usage = result.get("usage") or {}
    return {
        **meta.pop("prompt"),
        "completion": result["text"],
        "finish_reason": result["finish_reason"],
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "teacher": meta["teacher"],
        "sampling": meta["sampling"],
        "attempts": 1,
        "error": result.get("error"),
    }


async def _rollout(document, generate, *, sampling: dict, teacher: str) -> dict:
    """One chat request per prompt record; a failed request is recorded with its error, not raised."""
    from datatrove.pipeline.inference.types import InferenceError

    record = document.metadata
    seed = (
        (sampling["seed"] + int(record["id"][:8], 16)) % 2**31 if _is_hex(record["id"]) else sampling["seed"]
    )
    payload = {
        "messages": record["messages"],
        "max_tokens": sampling["max_new_tokens"],
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "seed": seed,
        **({"stop": sampling["stop"]} if sampling["stop"] else {}),
    }
    document.metadata = {"prompt": record, "teacher": teacher, "sampling": sampling}
    try:
        result = await generate(payload)
    except InferenceError as e:
        return {"text": "", "finish_reason": "error", "usage": {}, "error": str(e.error)[:500]}
    return {"text": result.text, "finish_reason": result.finish_reason, "usage": result.usage}


def _is_hex(text: str) -> bool:
    return len(text) >= 8 and all(c in "0123456789abcdef" for c in text[:8])


def _inference_runner(request_cache: bool, **kwargs):
    """datatrove's InferenceRunner with its request cache on or off (no argument for that upstream: the cache is on
    whenever checkpoints are; every cache method checks `enabled`, and the checkpoint manager shares the object)."""
    from datatrove.pipeline.inference.run_inference import InferenceRunner

    runner = InferenceRunner(**kwargs)
    runner.request_cache.enabled = request_cache
    return runner


def run_datatrove(
    recipe: Recipe, files: list[Path], workdir: Path, sampling: Sampling
) -> tuple[RunStats, str]:
    """Generate with datatrove's InferenceRunner; outputs land in `workdir/part-*.jsonl` for `finish_output`."""
    _check_dependencies()
    from functools import partial

    from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
    from datatrove.pipeline.inference.run_inference import InferenceConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    gen = recipe.data.generation
    inf, teacher = gen.inference, gen.teacher
    if inf.server_type == "endpoint" and not teacher.base_urls:
        raise StageError(
            "inference.server_type=endpoint needs data.generation.teacher.base_urls (the server URL)"
        )
    if inf.server_type in ("vllm", "sglang", "endpoint") and not teacher.model:
        raise StageError(f"inference.server_type={inf.server_type} needs data.generation.teacher.model")
    total = shard_prompts(files, sampling, workdir / "prompts", inf.tasks)
    model = teacher.model or "dummy"
    name = f"datatrove-{inf.server_type}:{model}"
    config = InferenceConfig(
        server_type=inf.server_type,
        model_name_or_path=model,
        endpoint_url=teacher.base_urls[0].rstrip("/").removesuffix("/v1") if teacher.base_urls else None,
        model_max_context=inf.model_max_context,
        tp=teacher.tensor_parallel_size,
        max_concurrent_generations=inf.max_concurrent,
        request_timeout=teacher.timeout_s,
        metric_interval=3600,
    )
    pipeline = [
        JsonlReader(
            str(workdir / "prompts"),
            compression=None,
            adapter=_reader_adapter,
            glob_pattern="*.jsonl",
            add_file_path=False,
        ),
        _inference_runner(
            request_cache=inf.request_cache,
            rollout_fn=partial(_rollout, sampling=sampling.to_dict(), teacher=name),
            config=config,
            output_writer=JsonlWriter(
                str(workdir),
                output_filename="part-${rank}-${chunk_index}.jsonl",
                compression=None,
                adapter=_writer_adapter,
            ),  # fmt: skip
            checkpoints_local_dir=str(workdir / "checkpoints"),
            records_per_chunk=inf.records_per_chunk,
        ),
    ]
    common = {"pipeline": pipeline, "tasks": inf.tasks, "logging_dir": str(workdir / "logs")}
    if inf.executor == "slurm":
        executor = SlurmPipelineExecutor(
            **common, time=inf.slurm_time, partition=inf.slurm_partition, job_name="generate",
            sbatch_args={"gres": f"gpu:{inf.slurm_gpus_per_task}"}, skip_completed=True,
        )  # fmt: skip
    else:
        executor = LocalPipelineExecutor(**common, workers=inf.workers, skip_completed=True)
    started = time.time()
    executor.run()
    if incomplete := executor.get_incomplete_ranks():  # failed, or still queued on Slurm
        raise StageError(
            f"generate: datatrove tasks {incomplete} have not finished (logs: {workdir / 'logs'}); re-run the same "
            "command once they are done, or to resume them from their checkpoints"
        )
    stats = RunStats(total=total, seconds=time.time() - started)
    for record in iter_parts(workdir):
        failed = bool(record.get("error"))
        stats.failed += failed
        stats.done += not failed
        stats.completion_tokens += record["completion_tokens"]
    return stats, name
