import pytest

from data_pipeline.teachers.transformers_teacher import TransformersTeacher


@pytest.fixture(scope="session")
def teacher():
    """The real offline teacher (SmolLM2-135M-Instruct), one thread: CI machines are shared."""
    t = TransformersTeacher(threads=1)
    yield t
    t.close()
