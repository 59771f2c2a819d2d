"""The dataset layer: one entry point, :func:`load_dataset`, for D4RL, Minari and offrl datasets.

>>> from offrl.data import load_dataset
>>> ds = load_dataset("hopper-medium-v2")   # doctest: +SKIP
"""

from offrl.data.dataset import Dataset
from offrl.data.download import download
from offrl.data.registry import (
    DatasetInfo,
    dataset_path,
    get_info,
    is_present,
    list_datasets,
    load_dataset,
    print_info,
    print_list,
    register,
)

__all__ = [
    "Dataset",
    "DatasetInfo",
    "load_dataset",
    "get_info",
    "list_datasets",
    "is_present",
    "register",
    "dataset_path",
    "print_list",
    "print_info",
    "download",
]

from offrl.data import builtin as _builtin  # noqa: E402,F401  (registers offrl's built-in datasets)
from offrl.data import recipes as _recipes  # noqa: E402,F401  (registers the locomotion recipes)
from offrl.data import fetch as _fetch  # noqa: E402,F401  (registers the scripted Fetch demos; offrl[robotics])
