"""Progress bars for job logs: on stderr, redrawn at most every 2 s so that logs stay short."""
import sys

from tqdm import tqdm


def bar(items, desc: str, unit: str) -> tqdm:
    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, mininterval=2)
