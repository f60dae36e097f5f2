"""Loaded networks, kept between runs and switched the way IOPaint's model manager switches models.

Entries are keyed by (owner backend, weights identity, device); the weights identity includes the
file's sha256, so a file re-imported under the same id is a new key. At most ``max_owners`` backends
keep models at once (the running backend plus one service, e.g. the face parser GPEN uses for its
paste mask): loading a model for a third backend unloads the least recently used backend's models.
``invalidate`` drops entries when weights are downloaded or imported.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional


class ModelCache:
    def __init__(self, max_owners: int = 2):
        self.max_owners = int(max_owners)
        self._models: "OrderedDict[str, dict[Hashable, Any]]" = OrderedDict()  # owner -> {key: model}
        self._weights_ids: dict[tuple[str, Hashable], Optional[str]] = {}
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader ran (tests, benchmarks)

    def get(self, owner: str, key: Hashable, load: Callable[[], Any], weights_id: Optional[str] = None) -> Any:
        """The model for ``(owner, key)``, loading it with ``load()`` the first time."""
        with self._lock:
            models = self._models.get(owner)
            if models is not None and key in models:
                self._models.move_to_end(owner)
                return models[key]
        model = load()  # outside the lock: loading can take seconds
        with self._lock:
            models = self._models.setdefault(owner, {})
            models[key] = model
            self._weights_ids[(owner, key)] = weights_id
            self._models.move_to_end(owner)
            self.loads += 1
            while len(self._models) > self.max_owners:
                evicted, _ = self._models.popitem(last=False)
                self._forget(evicted)
        return model

    def _forget(self, owner: str) -> None:
        for pair in [p for p in self._weights_ids if p[0] == owner]:
            del self._weights_ids[pair]

    def invalidate(self, weights_id: Optional[str] = None) -> None:
        """Drop every model (``None``) or those loaded from ``weights_id``."""
        with self._lock:
            if weights_id is None:
                self._models.clear()
                self._weights_ids.clear()
                return
            for (owner, key), wid in list(self._weights_ids.items()):
                if wid == weights_id:
                    self._models.get(owner, {}).pop(key, None)
                    del self._weights_ids[(owner, key)]
            for owner in [o for o, models in self._models.items() if not models]:
                del self._models[owner]

    def owners(self) -> list[str]:
        with self._lock:
            return list(self._models)


MODEL_CACHE = ModelCache()


def invalidate(weights_id: Optional[str] = None) -> None:
    """Called by the weights manager after a download or import."""
    MODEL_CACHE.invalidate(weights_id)
