import pytest
from teacher_helpers import Server


@pytest.fixture(scope="module")
def server():
    s = Server().start()
    yield s
    s.kill()
