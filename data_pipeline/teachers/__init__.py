"""Teacher backends behind one interface (see base.Teacher); `build_teacher` picks one from a recipe."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from data_pipeline.teachers.base import Completion, Messages, Sampling, Teacher

if TYPE_CHECKING:
    from recipes.generation import TeacherSection

__all__ = ["Completion", "Messages", "Sampling", "Teacher", "build_teacher"]


def build_teacher(section: TeacherSection) -> Teacher:
    """The teacher described by `recipe.data.generation.teacher` (backends are imported lazily)."""
    if section.backend == "transformers":
        from data_pipeline.teachers.transformers_teacher import TransformersTeacher

        return TransformersTeacher(
            section.model, device=section.device, dtype=section.dtype, threads=section.threads
        )
    if section.backend == "openai":
        from data_pipeline.teachers.openai_teacher import OpenAITeacher

        return OpenAITeacher(
            section.base_urls,
            model=section.model,
            api_key=os.environ.get(section.api_key_env) if section.api_key_env else None,
            concurrency=section.concurrency,
            timeout_s=section.timeout_s,
            retries=section.retries,
            backoff_s=section.backoff_s,
            max_backoff_s=section.max_backoff_s,
        )
    if section.backend == "vllm":
        from data_pipeline.teachers.vllm_teacher import VLLMTeacher

        return VLLMTeacher(
            section.model,
            tensor_parallel_size=section.tensor_parallel_size,
            dtype=section.dtype,
            gpu_memory_utilization=section.gpu_memory_utilization,
        )
    raise ValueError(f"unknown teacher backend {section.backend!r}")
