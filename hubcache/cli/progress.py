"""The aggregate progress bar of a parallel ``prefetch``.

Each download draws its own bar (in :mod:`hubcache.download`); this one adds
them up. Its total must not grow while it is shown, or its ETA is wrong from
the start: it is either known up front (every handle to download has a
``size=`` from a lock file), or left unknown (no percentage, no ETA) until
every download expected has announced its size, then set once.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, List, Optional

from ..cache import Cache
from ..config import Settings
from ..errors import HandleError
from ..handles import parse, requires_saved_model


def bars_enabled(settings: Settings) -> bool:
    return settings.progress if settings.progress is not None else sys.stderr.isatty()


def to_download(pins: Dict[str, Optional[str]], settings: Settings) -> List[str]:
    """The handles that are not validly cached yet, i.e. will be downloaded
    (unless they fail first, or another process fetches them meanwhile)."""
    if settings.offline or settings.load_format != "COMPRESSED":
        return []  # nothing is downloaded as an archive
    roots = [settings.cache_dir, *settings.readonly_dirs]
    out = []
    for handle, sha256 in pins.items():
        try:
            parsed = parse(handle)
        except HandleError:
            continue
        if not parsed.is_remote:
            continue
        if not parsed.cache_key:  # "latest": which entry is known only once Kaggle answers
            out.append(handle)
            continue
        require = requires_saved_model(parsed)
        if not any(Cache(r).lookup(parsed.cache_key, require_saved_model=require, sha256=sha256).valid for r in roots):
            out.append(handle)
    return out


class TotalBar:
    """One tqdm bar over all downloads; :meth:`hook` is the settings'
    ``progress_hook``, called from the download threads."""

    def __init__(self, bar: Any, expected: int, known_total: Optional[int]) -> None:
        self._bar = bar
        self._lock = threading.Lock()
        self._expected = expected
        self._fixed = known_total is not None
        self._started = 0
        self._announced = 0
        self._unknown = False  # a download without a Content-Length: no total at all

    def hook(self, received: int, announced: int) -> None:
        with self._lock:
            if received:
                self._bar.update(received)
                return
            # received == 0: a download starts, announcing its size (0: unknown).
            self._started += 1
            self._announced += announced
            self._unknown = self._unknown or not announced
            if not (self._fixed or self._unknown) and self._started == self._expected:
                self._bar.total = max(self._announced, self._bar.n)
                self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def total_bar(
    settings: Settings, pins: Dict[str, Optional[str]], sizes: Dict[str, int], jobs: int
) -> Optional[TotalBar]:
    """The aggregate bar, or None: bars off, one job, or fewer than two downloads."""
    if jobs <= 1 or len(pins) <= 1 or not bars_enabled(settings):
        return None
    pending = to_download(pins, settings)
    if len(pending) <= 1:
        return None
    known = sum(sizes[h] for h in pending) if all(h in sizes for h in pending) else None
    from tqdm import tqdm

    bar = tqdm(
        total=known,
        desc=f"all {len(pins)} handles",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        position=0,
        leave=False,
        mininterval=0.25,
    )
    return TotalBar(bar, len(pending), known)
