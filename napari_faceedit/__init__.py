"""napari-faceedit: semantic face editing in napari with interchangeable generator backends."""
__version__ = "0.1.0"
