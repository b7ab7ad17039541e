#!/usr/bin/env python
"""Synthetic-data generation at scale, on this CPU box (bench/README.md, "generation_scale.py").

1. Prompt building: `--prompts` (1M) prompts per method (cosmopedia, code-textbook, code-exercises) through the
   `prompts` stage, seeded from a local corpus (stdlib + a seeded sample of site-packages .py files): prompts/s
   (wall, corpus scan included), capacity, distinct count and near-identical share (Jaccard >= 0.95 on 5-word
   shingles, over the stage's diversity sample).
2. The generation path against servers that answer instantly, so only the client side is measured: for each
   of `--sizes` (10k, 100k, 1M) a fresh process runs the `generate` stage (validate, shard, generate, merge) with
   (a) datatrove's InferenceRunner (`endpoint` server type) and (b) the peer, our builtin runner + OpenAI
   teacher, both against a local OpenAI-compatible load generator (an aiohttp server in its own process that
   answers every request at once; datatrove's own `dummy` server answers one request at a time with ~0.2 s of
   Nagle/delayed-ACK stall, so it would measure itself, not the client).
   Prints prompts/s and peak RSS per size; RSS at 1M vs 10k is the flatness check.
Benchmark only: nothing is asserted.

    .venv/bin/python bench/generation_scale.py                                  # the full run (~1 h here)
    .venv/bin/python bench/generation_scale.py --prompts 100000 --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, from any cwd

METHODS = ("cosmopedia", "code-textbook", "code-exercises")


def _corpus(files: int) -> list[str]:
    # The stdlib with its test suite, plus a seeded sample of installed packages' Python files.
    return [
        "data.generation.corpus.use_curation_sources=false",
        "data.generation.corpus.sources.stdlib="
        f"{{max_files: {files}, exclude: [], include_site_packages: true}}",
    ]


def build_prompts(args: argparse.Namespace, work: Path) -> None:
    from data_pipeline.generation.stages import prompts_stage
    from recipes import load_recipe

    print(
        f"\n## prompt building: {args.prompts:,} per method, corpus = stdlib + site-packages sample ({args.files} files)"
    )
    print(
        f"{'method':15} {'prompts/s':>10} {'capacity':>12} {'distinct':>10} {'near-identical':>15} {'checked':>8}"
    )
    for method in METHODS:
        key = f"data.generation.{method.replace('-', '_')}.num_prompts={args.prompts}"
        recipe = load_recipe("tiny", [f"run_dir={work}", key, *_corpus(args.files)])
        manifest = prompts_stage(recipe, method, None, work / f"{method}.jsonl", force=True)
        d = manifest["diversity"]
        print(
            f"{method:15} {args.prompts / manifest['wall_seconds']:>10,.0f} {manifest['counts']['capacity']:>12,} "
            f"{d['distinct_prompts']:>10,} {d['near_identical_share_prompts']:>15.4%} {d['near_identical_checked']:>8,}",
            flush=True,
        )


ANSWER = {
    "choices": [
        {"message": {"role": "assistant", "content": "def f():\n    return 1\n"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
}


def serve(port_file: Path) -> None:
    """The load generator: an aiohttp OpenAI-compatible server answering every chat request at once."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(ANSWER)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "load-generator", "object": "model"}]})

    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models)])

    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    web.run_app(app, sock=sock, print=None, access_log=None)


def _start_load_generator(work: Path) -> tuple[subprocess.Popen, str]:
    port_file = work / "load-generator.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    while not port_file.is_file() or not port_file.read_text():
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port_file.read_text()}/v1"
    import httpx

    for _ in range(200):
        try:
            httpx.get(f"{url}/models", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc, url


def child(args: argparse.Namespace) -> None:
    """One generate run in this process; prints a JSON line with its wall time and peak RSS."""
    from data_pipeline.generation.stages import generate_stage
    from recipes import load_recipe

    work = Path(args.work)
    teacher = f"{{backend: openai, base_urls: [{args.url}], model: load-generator, concurrency: 64, batch_size: 256}}"
    overrides = [f"run_dir={work}", f"data.generation.teacher={teacher}"]
    if args.child == "datatrove":
        overrides.append(
            "data.generation.inference={runner: datatrove, server_type: endpoint, max_concurrent: 64}"
        )
    recipe = load_recipe("tiny", overrides)
    started = time.time()
    manifest = generate_stage(recipe, [Path(args.input)], work / f"gen-{args.child}.jsonl", force=True)
    seconds = time.time() - started
    rss = (
        max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    )
    print(json.dumps({"n": manifest["counts"]["done"], "seconds": seconds, "rss_mib": rss}))


def generation(args: argparse.Namespace, work: Path) -> None:
    source = work / "code-exercises.jsonl"
    if not source.is_file() or sum(1 for _ in source.open()) < max(args.sizes):
        from data_pipeline.generation.stages import prompts_stage
        from recipes import load_recipe

        n = max(args.sizes)
        recipe = load_recipe("tiny", [f"run_dir={work}", f"data.generation.code_exercises.num_prompts={n}"])
        prompts_stage(recipe, "code-exercises", None, source, force=True)
    print("\n## generation path against instant servers (client side only; each run a fresh process)")
    print(f"{'prompts':>9} {'engine':32} {'prompts/s':>10} {'peak RSS MiB':>13}")
    for size in args.sizes:
        subset = work / f"prompts-{size}.jsonl"
        with source.open() as f, subset.open("w") as out:
            out.writelines(itertools.islice(f, size))
        for engine, label in (
            ("datatrove", "datatrove InferenceRunner"),
            ("builtin", "builtin runner + openai"),
        ):
            server, url = _start_load_generator(work)
            cmd = [sys.executable, __file__, "--child", engine, "--input", str(subset), "--work", str(work)]
            try:
                done = subprocess.run([*cmd, "--url", url], capture_output=True, text=True, check=True)
            finally:
                server.kill()
                server.wait()
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{size:>9,} {label:32} {r['n'] / r['seconds']:>10,.0f} {r['rss_mib']:>13,.0f}", flush=True)
        subset.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=1_000_000, help="prompts built per method")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--files", type=int, default=6000, help="corpus files (stdlib + site-packages sample)"
    )
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    parser.add_argument("--skip-prompts", action="store_true", help="only the generation path")
    parser.add_argument("--child", choices=["datatrove", "builtin"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(Path(args.serve))
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="genscale-", dir=args.work) as tmp:
        work = Path(tmp)
        if not args.skip_prompts:
            build_prompts(args, work)
        generation(args, work)


if __name__ == "__main__":
    main()
