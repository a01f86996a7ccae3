"""A weight reference for tests of where work runs: light to import (numpy only), since worker
processes import the module of every object they unpickle."""

from pathlib import Path

import numpy as np


class StoredWeight:
    """A reference to a weight saved in an .npy file: what a worker loads by path, as references
    into a package's weight storage are loaded."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.shape = tuple(np.load(self.path, mmap_mode="r").shape)

    def load(self) -> np.ndarray:
        return np.load(self.path)
