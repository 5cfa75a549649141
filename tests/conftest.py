import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One data-dir for the end-to-end tests: the embedded dataset is generated there once."""
    return tmp_path_factory.mktemp("data")


# The files whose tests take longest on 2 cores (end-to-end `flwr run`, deployments, make targets), heaviest first:
# `make test` hands whole files to its processes (xdist --dist loadfile) in collection order, so a heavy file
# collected last would run alone at the end. Heaviest first, the processes finish close together.
HEAVY_FIRST = (
    "test_newcomer.py", "test_bench.py", "test_e2e.py", "test_export.py", "test_deployment_doors.py",
    "test_deploy.py", "test_missingness.py", "test_harmony_invariance.py", "test_robust.py", "test_run.py",
    "test_docs.py", "test_privacy.py", "test_paper_setting.py", "test_secure_aggregation.py", "test_real_data.py",
    "test_ray_cluster.py", "test_calibration.py", "test_pretrained_layouts.py", "test_align.py", "test_ablations.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order
