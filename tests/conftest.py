import os

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped where none is visible)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line(
        "markers", "extension: tests drdet._C itself (skipped where it is not loaded)"
    )


def pytest_collection_modifyitems(config, items):
    from drdet.layers import extension_loaded

    no_cuda = not torch.cuda.is_available()
    no_extension = not extension_loaded()
    for item in items:
        if no_cuda and "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU visible"))
        if no_extension and item.get_closest_marker("extension"):
            item.add_marker(pytest.mark.skip(reason="drdet._C is not loaded"))


@pytest.fixture(params=["extension", "pure"])
def op_form(request):
    """Runs a test twice: with the extension's kernels and with the pure-PyTorch forms of the
    ops (drdet.layers.use_extension); the first is skipped where drdet._C is not loaded."""
    from drdet.layers import extension_loaded, use_extension

    if request.param == "extension" and not extension_loaded():
        pytest.skip("drdet._C is not loaded")
    with use_extension(request.param == "extension"):
        yield request.param


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


@pytest.fixture
def keep_num_threads():
    """torch's CPU thread count restored after the test (a tool's --threads sets it)."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


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
