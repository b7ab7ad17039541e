"""GPU teacher: offline batch generation with `vllm.LLM` (optional dependency, extra `[gpu]`).

vLLM schedules the whole batch itself (continuous batching, paged KV cache), so the runner's
batch_size only sets how often results are appended to the resumable output.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.teachers.base import Completion, Messages, Sampling, Teacher
from stagekit.io import StageError


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMTeacher(Teacher):
    def __init__(
        self,
        model: str = "",
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
    ) -> None:
        if not vllm_available():
            raise StageError(
                "teacher backend 'vllm' needs the vllm package on a CUDA machine (pip install -e '.[gpu]'); "
                "on CPU use backend 'transformers', or 'openai' against a remote vLLM server"
            )
        import vllm

        from stagekit.assets import smollm2_dir

        path = model or str(smollm2_dir())
        self.llm = vllm.LLM(
            model=path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self._vllm = vllm
        self.name = f"vllm:{Path(path).name}"

    def complete(self, batch: list[Messages], sampling: Sampling) -> list[Completion]:
        params = self._vllm.SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
        )
        results = []
        for out in self.llm.chat(batch, params, use_tqdm=False):
            choice = out.outputs[0]
            results.append(
                Completion(
                    text=choice.text,
                    finish_reason="length" if choice.finish_reason == "length" else "stop",
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(choice.token_ids),
                )
            )
        return results

    def close(self) -> None:
        del self.llm
