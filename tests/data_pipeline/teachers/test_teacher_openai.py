"""The openai backend against a real `transformers serve` on 127.0.0.1: results, restarts, dead servers."""

import http.server
import json
import threading
import time

import httpx
import pytest
from teacher_helpers import Server

from data_pipeline.generation.runner import parts_dir, run_prompts
from data_pipeline.generation.stages import generate_stage
from data_pipeline.teachers import Sampling, build_teacher
from data_pipeline.teachers.openai_teacher import OpenAITeacher
from data_pipeline.teachers.transformers_teacher import TransformersTeacher
from recipes import load_recipe
from recipes.generation import TeacherSection
from stagekit.io import StageError, read_manifest

pytestmark = pytest.mark.slow
GREEDY = Sampling(max_new_tokens=8, temperature=0.0)
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name a colour."}],
]


def _openai(server: Server, **kw) -> OpenAITeacher:
    return OpenAITeacher([server.url], model=server.model, concurrency=2, timeout_s=120, **kw)


def test_server_completions_match_local_greedy(server):
    remote = _openai(server).complete(CHATS, GREEDY)
    local = TransformersTeacher(threads=1).complete(CHATS, GREEDY)
    assert [c.text for c in remote] == [c.text for c in local]
    for r, lo in zip(remote, local):
        assert r.error is None and r.attempts == 1
        assert r.prompt_tokens == lo.prompt_tokens
        # transformers serve counts the EOS token as generated (and calls an EOS in the last slot 'length')
        assert r.completion_tokens - lo.completion_tokens in (0, 1)


class ModelListFront:
    """A proxy in front of the real server that answers `GET /v1/models` as the test says (a listing or an
    HTTP 500) and forwards everything else, so both lookup outcomes happen on purpose, whatever the
    installed server version does with /models."""

    def __init__(self, backend: Server, listing: list[str] | None):
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                front.model_requests += 1
                if self.path.rstrip("/") != "/v1/models":
                    return self._reply(404, b"{}")
                if listing is None:
                    return self._reply(500, b'{"error": "listing disabled by the test"}')
                self._reply(
                    200, json.dumps({"data": [{"id": m, "object": "model"} for m in listing]}).encode()
                )

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                r = httpx.post(backend.url.removesuffix("/v1") + self.path, content=body, timeout=120,
                               headers={"Content-Type": "application/json"})  # fmt: skip
                self._reply(r.status_code, r.content)

        self.model_requests = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_model_lookup_picks_the_listed_model(server):
    front = ModelListFront(server, listing=[server.model, "some-other-model"])
    try:
        teacher = build_teacher(TeacherSection(backend="openai", base_urls=[front.url], model=""))
        out = teacher.complete(CHATS[:1], GREEDY)[0]
        assert front.model_requests == 1 and teacher.model == server.model  # the first listed id
        assert out.error is None and out.completion_tokens > 0
    finally:
        front.close()


def test_model_lookup_failure_says_what_to_set(server):
    front = ModelListFront(server, listing=None)
    try:
        teacher = build_teacher(TeacherSection(backend="openai", base_urls=[front.url], model=""))
        with pytest.raises(
            StageError, match=r"GET /models .*ClientResponseError.*500.*set data\.generation\.teacher\.model"
        ) as failure:
            teacher.complete(CHATS[:1], GREEDY)
        assert "\n" not in str(failure.value)  # one line, as every stage error
        named = build_teacher(TeacherSection(backend="openai", base_urls=[front.url], model=server.model))
        assert named.complete(CHATS[:1], GREEDY)[0].completion_tokens > 0  # naming the model skips the lookup
        assert front.model_requests == 1
    finally:
        front.close()


def test_bad_request_is_recorded_not_retried(server):
    out = OpenAITeacher([server.url], model="not-the-served-model", retries=3).complete(CHATS[:1], GREEDY)[0]
    assert out.finish_reason == "error" and out.attempts == 1 and "HTTP 400" in out.error


def test_server_killed_and_restarted_mid_run(server, tmp_path):
    prompts = [{"id": f"k{i}", "prompt": f"Count to {i + 2}."} for i in range(5)]
    journal = tmp_path / "gen.jsonl.partial"

    def crash_and_recover():
        while not journal.exists() or journal.read_bytes().count(b"\n") < 1:
            time.sleep(0.02)
        server.kill()
        time.sleep(1.0)
        server.start()

    helper = threading.Thread(target=crash_and_recover)
    helper.start()
    teacher = OpenAITeacher(
        [server.url],
        model=server.model,
        concurrency=1,
        timeout_s=60,
        retries=60,
        backoff_s=0.5,
        max_backoff_s=2.0,
    )
    out, stats = run_prompts(prompts, teacher, GREEDY, batch_size=1, journal=journal, progress=False)
    helper.join()
    assert [r["id"] for r in out] == [p["id"] for p in prompts]
    assert stats.done == 5 and stats.failed == 0 and stats.retried >= 1
    assert max(r["attempts"] for r in out) > 1
    assert all(r["completion_tokens"] > 0 and r["error"] is None for r in out)


def test_unreachable_server_fails_clearly_and_keeps_completed(server, tmp_path):
    prompts_file, output = tmp_path / "prompts.jsonl", tmp_path / "gen.jsonl"
    ids = [f"u{i}" for i in range(4)]
    prompts_file.write_text("".join(json.dumps({"id": i, "prompt": f"Say {i}."}) + "\n" for i in ids))
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        f"name: openai-test\nrun_dir: {tmp_path / 'run'}\n"
    )  # schema defaults, not tiny.yaml
    recipe = load_recipe(
        recipe_file,
        [
            "data.generation.teacher.backend=openai",
            f"data.generation.teacher.base_urls=[{server.url}]",
            f"data.generation.teacher.model={server.model}",
            "data.generation.teacher.batch_size=1",
            "data.generation.teacher.concurrency=1",
            "data.generation.teacher.retries=2",
            "data.generation.teacher.backoff_s=0.05",
            "data.generation.sampling.max_new_tokens=6",
        ],
    )
    journal = parts_dir(output) / "part-00000.jsonl.partial"  # the first part's journal

    def kill_after_first():
        while not journal.exists() or journal.read_bytes().count(b"\n") < 1:
            time.sleep(0.01)
        server.kill()

    killer = threading.Thread(target=kill_after_first)
    killer.start()
    with pytest.raises(
        StageError, match=r"prompts failed after the teacher's retries .*failed after 3 attempts.*kept in"
    ):
        generate_stage(recipe, [prompts_file], output)
    killer.join()
    assert not output.exists()
    kept = [json.loads(line) for line in journal.read_text().splitlines()]
    completed = {r["id"] for r in kept if not r["error"]}
    assert completed and all(r["attempts"] == 3 for r in kept if r["error"])

    server.start()  # the same command again: only the failed prompts are sent
    manifest = generate_stage(recipe, [prompts_file], output)
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ids
    assert manifest["counts"]["resumed"] == len(completed) and manifest["counts"]["failed"] == 0
    assert read_manifest(output)["teacher"] == f"openai:{server.model}"
