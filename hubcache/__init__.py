"""hubcache: get pre-trained TensorFlow models onto a machine and keep them there.

>>> import hubcache
>>> model = hubcache.load("https://tfhub.dev/google/nnlm-en-dim128/2")  # doctest: +SKIP

Handles are local paths, tfhub.dev and Kaggle model URLs, the China mirror,
``gs://`` archives and plain http(s) archive URLs. Models are cached in
``TFHUB_CACHE_DIR`` in tensorflow_hub's layout, so both tools share a cache.
Importing this package is cheap: TensorFlow, requests and tqdm are imported
only when they are needed.
"""

from ._version import __version__
from .api import load, prefetch, resolve
from .errors import (
    ArchiveError,
    CacheError,
    CacheLockTimeout,
    ConfigError,
    DownloadError,
    HandleError,
    HubcacheError,
    IntegrityError,
    ModelNotFoundError,
    OfflineError,
    PrefetchError,
    TensorFlowNotInstalled,
)

__all__ = [
    "__version__",
    "load",
    "resolve",
    "prefetch",
    "HubcacheError",
    "ConfigError",
    "HandleError",
    "ModelNotFoundError",
    "DownloadError",
    "ArchiveError",
    "IntegrityError",
    "CacheError",
    "CacheLockTimeout",
    "OfflineError",
    "TensorFlowNotInstalled",
    "PrefetchError",
]
