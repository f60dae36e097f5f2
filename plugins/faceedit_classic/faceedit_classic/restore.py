"""Classical restoration: non-local-means denoising followed by unsharp masking of luminance."""
from __future__ import annotations

import numpy as np

from napari_faceedit.backend import Backend, RunContext
from napari_faceedit.params import Param
from napari_faceedit.tasks import RestoreRequest, Result, Task, is_grayscale


def denoise_sharpen(image: np.ndarray, sharpen_amount: float = 0.8, progress=None, check=None) -> tuple[np.ndarray, str]:
    """Denoise with NL-means at the estimated noise level, then sharpen luminance only (no colour fringes)."""
    # Imported here: skimage.restoration pulls in scipy.stats (~0.3 s), which listing backends must not pay.
    from skimage.color import lab2rgb, rgb2lab
    from skimage.filters import unsharp_mask
    from skimage.restoration import denoise_nl_means, estimate_sigma

    gray = is_grayscale(image)
    data = image.astype(np.float64) / 255.0
    sigma = float(np.mean(estimate_sigma(data, channel_axis=-1)))
    if progress:
        progress(1, 3, f"denoising (estimated noise sigma {sigma * 255:.1f}/255)")
    if sigma > 0.5 / 255:
        data = denoise_nl_means(data, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                fast_mode=True, channel_axis=-1)
    if check:
        check()
    if progress:
        progress(2, 3, "sharpening")
    lab = rgb2lab(np.clip(data, 0, 1))
    lightness = unsharp_mask(lab[..., 0] / 100.0, radius=1.5, amount=sharpen_amount, preserve_range=True)
    lab[..., 0] = np.clip(lightness, 0, 1) * 100.0
    if gray:
        lab[..., 1:] = 0.0  # a grayscale photo stays grayscale
    out = np.clip(np.rint(lab2rgb(lab) * 255.0), 0, 255).astype(np.uint8)
    if gray:
        out[:] = out.mean(axis=2, keepdims=True).round().astype(np.uint8)
    return out, f"NL-means sigma={sigma * 255:.1f}/255, unsharp amount {sharpen_amount}"


class ClassicRestoration(Backend):
    name = "classic-restore"
    version = "0.1.0"
    tasks = frozenset({Task.RESTORE})
    description = "Removes noise (non-local means at the estimated noise level) and sharpens luminance."
    limitations = ("No face prior: it cannot recover detail lost to blur or low resolution, and strong "
                   "JPEG blocking is only softened.")

    parameters = (Param("sharpen", 0.8, "unsharp-mask amount on luminance after denoising", min=0.0, max=3.0),)

    def run(self, request: RestoreRequest, ctx: RunContext) -> Result:
        ctx.progress(0, 3, "estimating noise")
        out, notes = denoise_sharpen(request.image, ctx.params["sharpen"], ctx.progress, ctx.check)
        ctx.check()
        ctx.progress(3, 3, "done")
        ctx.note(notes)
        return Result(image=out)
