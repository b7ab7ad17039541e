"""The transformers backend against plain transformers generation (the reference), one prompt at a time."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_pipeline.teachers import Sampling, build_teacher
from data_pipeline.teachers.transformers_teacher import TransformersTeacher, _torch_threads, cut_at_stop
from recipes.generation import TeacherSection
from stagekit.assets import smollm2_dir
from stagekit.io import StageError

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three prime numbers, please."},
    ],
    [{"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def teacher():
    t = build_teacher(TeacherSection(threads=1))
    yield t
    t.close()


def test_cut_at_stop():
    assert cut_at_stop("abc END def END", ("END",)) == ("abc ", True)
    assert cut_at_stop("abc", ("x", "")) == ("abc", False)
    assert cut_at_stop("a\n\nb;c", ("\n\n", ";")) == ("a", True)


@pytest.mark.slow
def test_left_padded_batch_matches_unbatched_reference(teacher):
    n = 8
    batch = teacher.complete(CHATS, Sampling(max_new_tokens=n, temperature=0.0))
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32).eval()
    for chat, got in zip(CHATS, batch):
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode(), _torch_threads(1):
            out = model.generate(**ids, max_new_tokens=n, do_sample=False)
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert got.text == tok.decode(new, skip_special_tokens=True)
        assert got.completion_tokens == len(new)
        assert got.prompt_tokens == ids["input_ids"].shape[1]
        assert got.finish_reason == ("length" if len(new) == n else "stop")


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_stop_strings_cut(teacher):
    s = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=3)
    a, b = teacher.complete(CHATS, s), teacher.complete(CHATS, s)
    assert [c.text for c in a] == [c.text for c in b]
    stopped = teacher.complete(CHATS[:1], Sampling(max_new_tokens=16, temperature=0.0, stop=("Paris",)))[0]
    assert "Paris" not in stopped.text and stopped.finish_reason == "stop"


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="teacher model not found"):
        TransformersTeacher(tmp_path / "nope")


def test_vllm_backend_without_vllm_says_why():
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here; the GPU test covers it")
    with pytest.raises(StageError, match="needs the vllm package on a CUDA machine"):
        build_teacher(TeacherSection(backend="vllm"))


@pytest.mark.gpu
def test_vllm_backend_generates():
    pytest.importorskip("vllm", reason="vllm is optional (extra [gpu]) and needs CUDA")
    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU")
    teacher = build_teacher(TeacherSection(backend="vllm", dtype="float32"))
    out = teacher.complete(CHATS, Sampling(max_new_tokens=8, temperature=0.0))
    assert len(out) == 3 and all(c.completion_tokens > 0 for c in out)
