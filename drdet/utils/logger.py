"""Process-aware logging setup."""

import logging
import os
import sys

FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logger(
    name: str = "drdet",
    output_dir: str | None = None,
    distributed_rank: int = 0,
    filename: str = "log.txt",
) -> logging.Logger:
    """Configure the logger `name` (and its children, e.g. "drdet.trainer").

    Rank 0 logs INFO and above to stdout and, when `output_dir` is given, to
    output_dir/`filename` (appending). Other ranks log nothing, so messages are not repeated once
    per GPU. Calling it again replaces the handlers it installed before instead of adding more.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if distributed_rank > 0:
        logger.addHandler(logging.NullHandler())
        return logger
    formatter = logging.Formatter(FORMAT)
    stream = logging.StreamHandler(stream=sys.stdout)
    stream.setLevel(logging.INFO)
    stream.setFormatter(formatter)
    logger.addHandler(stream)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, filename))
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(formatter)
        logger.addHandler(fh)
    return logger
