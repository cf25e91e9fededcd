import os

import numpy as np
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


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cuda),
]


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


def detectron_cell_anchors_inclusive(stride, sizes, ratios):
    """Detectron's anchor enumeration written out for the tests, in its own inclusive corners:
    a (stride x stride) reference box at (0, 0, stride - 1, stride - 1); per ratio, a box of the
    same area with width round(sqrt(area / ratio)) and height round(width * ratio); each scaled
    by size / stride about the reference centre."""
    centre = (stride - 1) / 2.0
    rows = []
    for r in ratios:
        w0 = np.round(np.sqrt(stride * stride / r))
        h0 = np.round(w0 * r)
        for size in sizes:
            w, h = w0 * size / stride, h0 * size / stride
            rows.append([centre - (w - 1) / 2, centre - (h - 1) / 2,
                         centre + (w - 1) / 2, centre + (h - 1) / 2])
    return torch.tensor(rows, dtype=torch.float64)
