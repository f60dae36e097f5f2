"""GPEN blind face restoration and a compact learned restorer for napari-faceedit."""
