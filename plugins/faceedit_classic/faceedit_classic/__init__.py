"""Classical (download-free) backends for napari-faceedit."""
