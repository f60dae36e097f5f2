"""The one small base class every generator backend subclasses (one file per model, IOPaint-style)."""
from __future__ import annotations

from typing import Callable, ClassVar, Optional

from .tasks import Request, Result, Task

ProgressCallback = Callable[[int, int, str], None]  # (step, total, message)
CancelledCallback = Callable[[], bool]


class RunCancelled(Exception):
    """Raised inside a backend when the user cancelled; the runner turns it into "no result"."""


class Backend:
    """A generator backend.

    Subclasses set the class attributes and implement :meth:`run`. ``run`` reports progress in
    steps through ``progress(step, total, message)`` and calls ``self.check(cancelled)`` between
    steps; a cancelled run raises :class:`RunCancelled` and must not have changed anything.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    tasks: ClassVar[frozenset[Task]] = frozenset()
    # What the backend can and cannot do, in a sentence or two shown to the user.
    description: ClassVar[str] = ""
    limitations: ClassVar[str] = ""
    # CelebA attribute names this backend can edit/condition on (see vocab.CELEBA_ATTRIBUTES).
    supported_attributes: ClassVar[tuple[str, ...]] = ()
    # Ids in the weights registry that must be present before the backend can run.
    weights: ClassVar[tuple[str, ...]] = ()
    # Our own small models shipped in resources/models (file names; see weights.bundled_path).
    bundled: ClassVar[tuple[str, ...]] = ()
    # Higher wins when the CLI picks "the best available backend" for a task.
    priority: ClassVar[int] = 0
    uses_torch: ClassVar[bool] = False

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this backend can run on here, best first is *not* implied: cpu is always first."""
        if not cls.uses_torch:
            return ["cpu"]
        return available_torch_devices()

    @classmethod
    def missing_weights(cls) -> list[str]:
        """Registry ids of required weights that are not in the cache (empty = ready)."""
        if not cls.weights:
            return []
        from .weights import missing  # imported lazily: backends without weights never need it

        return missing(cls.weights)

    @classmethod
    def ready(cls) -> tuple[bool, str]:
        """(ready, why not): names each missing or corrupt file and how to get it."""
        if not (cls.weights or cls.bundled):
            return True, "ready"
        from . import weights

        problems = [f"embedded model {weights.bundled_path(name)} is missing (reinstall napari-faceedit)"
                    for name in cls.bundled if not weights.bundled_path(name).is_file()]
        for weights_id in cls.weights:
            try:
                found = weights.check(weights_id)
            except weights.UnknownWeightsError as error:
                problems.append(str(error))
                continue
            if found.state == weights.CORRUPT:
                problems.append(f"weights '{weights_id}' are corrupt: {found.message}; "
                                f"run faceedit weights download {weights_id} --force, or import a good copy")
            elif found.state != weights.PRESENT:
                problems.append(found.message)
        return (False, "; ".join(problems)) if problems else (True, "ready")

    @staticmethod
    def check(cancelled: Optional[CancelledCallback]) -> None:
        if cancelled is not None and cancelled():
            raise RunCancelled()

    def run(self, request: Request, progress: ProgressCallback, cancelled: CancelledCallback) -> Result:
        raise NotImplementedError


def available_torch_devices() -> list[str]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but stay usable without it
        return ["cpu"]
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices
