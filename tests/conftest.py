import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Let test modules import sibling helper modules (e.g. tests/adamshap_core/oracle.py).
sys.path.insert(0, str(Path(__file__).parent / "adamshap_core"))

# In CI a skip for missing data fails the run (tests/data_guard.py).
from tests.data_guard import pytest_runtest_makereport  # noqa: E402, F401
