"""The ``maskguided-compact`` backend: our own mask-guided editing model (:mod:`.learned`), trained
here and shipped in the plugin. Kept free of torch at import time, so that listing backends does not
pay for it; the model code is imported when a run loads it."""
from __future__ import annotations

from pathlib import Path

from napari_faceedit.backend import RunContext
from napari_faceedit.params import Param
from napari_faceedit.synthesis import LabelSynthesisBackend

COMPACT_FILE = "maskguided_compact.pt"
REDRAW_MODES = ("changed", "face")


class LearnedMaskGuided(LabelSynthesisBackend):
    """Mask-guided editing with our own compact model (trained here, shipped in the plugin)."""

    name = "maskguided-compact"
    version = "1"
    description = ("Our compact mask-guided portrait editing model (the design of Gu et al., CVPR 2019, trained "
                   "here on CelebAMask-HQ): renders the face in your edited label layout with its own eyes, mouth, "
                   "skin and hair appearance; takes eyes, mouth, skin or hair from another face. Embedded, no "
                   "download.")
    limitations = ("A small model trained on a CPU from 750 faces: it follows edited labels more closely than "
                   "classic-synthesize, but its renders are soft and eyes can show texture artifacts (by default "
                   "only the pixels near the changed labels are re-drawn; the rest stays bit for bit). 256 px "
                   "faces; brows and nose belong to its skin code and cannot be taken alone; ears, neck and "
                   "accessories count as background.")
    uses_torch = True
    # Below classic-synthesize (priority 0): on the held-out val faces it follows edited labels better
    # (mIoU 0.745 vs 0.737, changed labels followed 0.81 vs 0.72; benchmarks/results/synthesize_eval.md),
    # but its re-drawn parts show colour and texture artifacts that the classical warps do not.
    priority = -10
    bundled = (COMPACT_FILE,)
    parameters = (Param("redraw", "changed", "re-draw only the pixels near changed labels (changed) or the whole "
                        "face as the paper does (face)", choices=REDRAW_MODES),)

    def __init__(self):
        self._model = None  # injected model (tests, fresh training exports)

    @classmethod
    def from_model(cls, model) -> "LearnedMaskGuided":
        """A backend around an already built :class:`.learned.CompactMaskGuided` (a training export,
        a test network)."""
        backend = cls()
        backend._model = model.eval()
        backend.ready = lambda: (True, "ready (model supplied by the caller)")  # type: ignore[method-assign]
        return backend

    @classmethod
    def from_file(cls, path) -> "LearnedMaskGuided":
        """A backend around an exported file (``faceedit train maskguided --export PATH``)."""
        from .learned import load_exported

        model, _ = load_exported(Path(path))
        return cls.from_model(model)

    def load(self, ctx: RunContext) -> None:
        from .learned import CompactMaskGuided

        if self._model is not None:
            self.model = self._model.to(ctx.device)
        else:
            self.model = ctx.load_bundled(COMPACT_FILE, CompactMaskGuided)

    def render(self, image, labels, target_labels, ctx):
        from .learned import render

        ctx.check()
        return render(self.model, image, labels, target_labels, ctx.params["redraw"])

    def transfer(self, image, labels, donor_image, donor_labels, components, ctx):
        from .learned import transfer

        ctx.check()
        return transfer(self.model, image, labels, donor_image, donor_labels, components, ctx.params["redraw"])
