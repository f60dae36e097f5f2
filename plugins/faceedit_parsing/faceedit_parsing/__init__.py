"""Face parsing for napari-faceedit: our compact parser and a BiSeNet re-implementation."""
