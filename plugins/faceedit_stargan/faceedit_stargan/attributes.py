"""StarGAN's label vocabulary, without torch: the backend's class attributes need it when backends
are listed, which must not import the model."""

NORM_MODES = ("instance", "running")
CELEBA_ATTRIBUTES_5 = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
HAIR_COLORS_5 = ("Black_Hair", "Blond_Hair", "Brown_Hair")
