"""TediGAN for napari-faceedit: text-guided face editing by StyleGAN inversion, with our own CLIP ViT-B/32."""
