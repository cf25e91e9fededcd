import os

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped where none is visible)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_drdet_logger():
    """tools/train_net.py's setup_logger stops "drdet" records from reaching the root logger (so
    they are not printed twice); undo that between tests so caplog sees them in every test."""
    import logging

    logger = logging.getLogger("drdet")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    yield


@pytest.fixture(scope="module")
def synthetic_datasets_root(tmp_path_factory):
    """DRDET_DATASETS pointed at a fresh folder for a test module, so that the synthetic sets the
    tests generate land there and not in the repository; restored afterwards."""
    root = str(tmp_path_factory.mktemp("datasets"))
    old = os.environ.get("DRDET_DATASETS")
    os.environ["DRDET_DATASETS"] = root
    yield root
    if old is None:
        del os.environ["DRDET_DATASETS"]
    else:
        os.environ["DRDET_DATASETS"] = old
