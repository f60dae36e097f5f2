"""StarGAN for napari-faceedit: faithful generator/discriminator, trainer, attribute-editing backend."""
