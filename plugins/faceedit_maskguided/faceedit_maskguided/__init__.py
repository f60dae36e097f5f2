"""Mask-Guided Portrait Editing (Gu et al., CVPR 2019) for napari-faceedit: the authors' 17 networks
key for key, their test-time preprocessing and composition, and a parity model."""
