"""Attribute-controlled face completion (Chen, Nie, Wu & Healey 2018): a progressively grown U-Net
generator that fills a hole in an aligned face crop, conditioned on CelebA attributes.

Public API for backends: :func:`faceedit_completion.model.load_generator` and
:func:`faceedit_completion.model.complete`; the supported attribute names are
:data:`faceedit_completion.attributes.SUPPORTED_ATTRIBUTES`.
"""
