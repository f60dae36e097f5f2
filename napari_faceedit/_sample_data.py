"""Sample data: a freely licensed portrait (NASA photo of Eileen Collins, public domain, shipped with scikit-image)."""
from __future__ import annotations


def astronaut_portrait():
    from skimage import data

    return [(data.astronaut(), {"name": "astronaut portrait", "rgb": True,
                                "metadata": {"licence": "public domain (NASA), from skimage.data"}})]
