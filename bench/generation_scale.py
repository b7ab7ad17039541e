#!/usr/bin/env python
"""Synthetic-data generation at scale, on this CPU box (bench/README.md, "generation_scale.py").

1. Prompt building: `--prompts` (1M) prompts per method (cosmopedia, code-textbook, code-exercises) through the
   `prompts` stage, seeded from a local corpus (stdlib + a seeded sample of site-packages .py files): prompts/s
   (wall, corpus scan included), capacity, distinct count and near-identical share (Jaccard >= 0.95 on 5-word
   shingles, over the stage's diversity sample).
2. The generation path against servers that answer instantly, so only the client side is measured: for each
   of `--sizes` (10k, 100k, 1M) a fresh process runs the `generate` stage (validate, shard, generate, merge) with
   (a) datatrove's InferenceRunner (`endpoint` server type) and (b) the peer, our builtin runner + OpenAI
   teacher, both against a local OpenAI-compatible load generator (`serve`: a bare asyncio HTTP/1.1 server in its
   own process that answers every request at once; datatrove's own `dummy` server answers one request at a time
   with ~0.2 s of Nagle/delayed-ACK stall, so it would measure itself, not the client).
   Prints prompts/s (wall), prompts per CPU-second of the client process (its overhead: what one core of the
   client sustains, whatever else shares the box), the load generator's CPU seconds and the client's peak RSS
   per size; RSS at 1M vs 10k is the flatness check.
Benchmark only: nothing is asserted.

    .venv/bin/python bench/generation_scale.py                                  # the full run (~1 h here)
    .venv/bin/python bench/generation_scale.py --prompts 100000 --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, from any cwd

METHODS = ("cosmopedia", "code-textbook", "code-exercises")
ENGINES = {"datatrove": "datatrove InferenceRunner", "builtin": "builtin runner + openai"}


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
    for method in args.methods:
        key = f"data.generation.{method.replace('-', '_')}.num_prompts={args.prompts}"
        recipe = load_recipe("tiny", [f"run_dir={work}", key, *_corpus(args.files)])
        manifest = prompts_stage(recipe, method, None, work / f"{method}.jsonl", force=True)
        d = manifest["diversity"]
        print(
            f"{method:15} {args.prompts / manifest['wall_seconds']:>10,.0f} {manifest['counts']['capacity']:>12,} "
            f"{d['distinct_prompts']:>10,} {d['near_identical_share_prompts']:>15.4%} {d['near_identical_checked']:>8,}",
            flush=True,
        )


ANSWER = json.dumps(
    {
        "choices": [
            {"message": {"role": "assistant", "content": "def f():\n    return 1\n"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    }
).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "load-generator", "object": "model"}]}).encode()


def _reply(body: bytes, close: bool) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode() + body


def serve(port_file: Path) -> None:
    """The load generator: an OpenAI-compatible HTTP/1.1 server answering every request at once with a canned
    completion, on a bare asyncio protocol (keep-alive, or `Connection: close` as datatrove's localhost client
    sends). It spends ~0.11 ms of CPU per request where an aiohttp server spent 0.27 ms (measured in one run
    under the same aiohttp client), CPU taken from the same 2 cores as the client. asyncio sets TCP_NODELAY on its
    sockets and each answer is one write, so there is no Nagle/delayed-ACK stall."""
    import asyncio
    import socket

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].lower()
                length = next(
                    (int(line[15:]) for line in head.split(b"\r\n") if line.startswith(b"content-length:")), 0
                )
                if len(self.buffer) < end + 4 + length:
                    return  # the body is still arriving
                self.buffer = self.buffer[end + 4 + length :]
                close = b"\r\nconnection: close" in head
                self.transport.write(_reply(MODELS if head.startswith(b"get") else ANSWER, close))
                if close:
                    self.transport.close()
                    return

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port_file.write_text(str(sock.getsockname()[1]))
        server = await asyncio.get_running_loop().create_server(Protocol, sock=sock, backlog=4096)
        await server.serve_forever()

    asyncio.run(main())


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
    """One generate run in this process; prints a JSON line with its wall time, CPU time and peak RSS."""
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
    started, cpu = time.time(), os.times()
    manifest = generate_stage(recipe, [Path(args.input)], work / f"gen-{args.child}.jsonl", force=True)
    seconds, end = time.time() - started, os.times()
    cpu_s = sum(end[:4]) - sum(cpu[:4])  # user + system, of this process and of any datatrove workers
    print(
        json.dumps(
            {"n": manifest["counts"]["done"], "seconds": seconds, "cpu_s": cpu_s, "rss_mib": _peak_rss()}
        )
    )


def _peak_rss() -> float:
    """This process's peak RSS in MiB (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (/proc/PID/stat fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def generation(args: argparse.Namespace, work: Path) -> None:
    source = work / "code-exercises.jsonl"
    if not source.is_file() or sum(1 for _ in source.open()) < max(args.sizes):
        from data_pipeline.generation.stages import prompts_stage
        from recipes import load_recipe

        n = max(args.sizes)
        recipe = load_recipe("tiny", [f"run_dir={work}", f"data.generation.code_exercises.num_prompts={n}"])
        prompts_stage(recipe, "code-exercises", None, source, force=True)
    print("\n## generation path against instant servers (client side only; each run a fresh process)")
    print(
        f"{'prompts':>9} {'engine':32} {'prompts/s':>10} {'per client CPU-s':>17} {'load-gen CPU-s':>15} "
        f"{'peak RSS MiB':>13}"
    )
    for size in args.sizes:
        subset = work / f"prompts-{size}.jsonl"
        with source.open() as f, subset.open("w") as out:
            out.writelines(itertools.islice(f, size))
        for engine in args.engines:
            label = ENGINES[engine]
            server, url = _start_load_generator(work)
            cmd = [sys.executable, __file__, "--child", engine, "--input", str(subset), "--work", str(work)]
            try:
                done = subprocess.run([*cmd, "--url", url], capture_output=True, text=True, check=True)
                server_cpu = _cpu_seconds(server.pid)
            finally:
                server.kill()
                server.wait()
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{size:>9,} {label:32} {r['n'] / r['seconds']:>10,.0f} {r['n'] / r['cpu_s']:>17,.0f} "
                f"{server_cpu:>15,.1f} {r['rss_mib']:>13,.0f}",
                flush=True,
            )
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
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="prompt builders run"
    )
    parser.add_argument("--skip-generation", action="store_true", help="only prompt building")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)
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
        if not args.skip_generation:
            generation(args, work)


if __name__ == "__main__":
    main()
