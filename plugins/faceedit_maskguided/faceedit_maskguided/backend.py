"""Mask-guided portrait editing (Gu et al., CVPR 2019) on the core face pipeline.

Each face is aligned to the CelebAMask-HQ framing at 256 px (the model's size), its labels and the
edited labels are mapped to the model's 11 Helen classes, and the authors' test-time inference
renders the face in the edited layout with the source's component appearance; only the region that
changed is pasted back. Component transfer encodes the chosen components from the donor face and the
others from the face itself.
"""
from __future__ import annotations

import numpy as np

from napari_faceedit.backend import RunContext
from napari_faceedit.synthesis import LabelSynthesisBackend, with_components

# The 11 checkpoints the authors' editing test runs (model.TEST_TIME_LABELS; repeated here so that
# listing backends does not import torch; a test checks the two agree).
TEST_TIME_CHECKPOINTS = ("G", "encoder_skin", "encoder_hair", "encoder_left_eye", "encoder_right_eye", "encoder_mouth",
                         "decoder_skin", "decoder_hair", "decoder_left_eye", "decoder_right_eye", "decoder_mouth")
# Our face components -> the model's component encoders (brows and nose are part of its skin code).
MODEL_COMPONENTS = {"eyes": ("left_eye", "right_eye"), "mouth": ("mouth",), "skin": ("skin",), "hair": ("hair",)}


def weights_id(label: str) -> str:
    """Catalogue id of one of the authors' checkpoint files (``encoder_left_eye`` -> ``maskguided-helen-encoder-left-eye``)."""
    return "maskguided-helen-" + label.lower().replace("_", "-")


class MaskGuidedEditing(LabelSynthesisBackend):
    name = "maskguided-helen"
    version = "1"
    description = ("Mask-guided portrait editing (Gu et al., CVPR 2019) with the authors' Helen networks: renders "
                   "the face in your edited label layout with its own eyes, mouth, skin and hair appearance; "
                   "takes eyes, mouth, skin or hair from another face.")
    limitations = ("Needs the authors' 11 test-time checkpoints (shared by hand only: download them in a browser and "
                   "import them); non-commercial research use. 256 px faces; brows and nose are part of its skin "
                   "code and cannot be taken alone; ears, neck and accessories count as background.")
    uses_torch = True
    priority = 30
    weights = tuple("maskguided-helen-" + label.lower().replace("_", "-") for label in TEST_TIME_CHECKPOINTS)

    def load(self, ctx: RunContext) -> None:
        from .inference import prepare_for_inference
        from .model import EditingNetworks, load_network_state

        def build(paths: dict) -> EditingNetworks:
            import torch

            networks = EditingNetworks()
            for label in TEST_TIME_CHECKPOINTS:
                state = torch.load(paths[weights_id(label)], map_location="cpu", weights_only=True)
                load_network_state(getattr(networks, label), state, label)
            return prepare_for_inference(networks.eval())

        self.networks = ctx.load_model_set(tuple(weights_id(label) for label in TEST_TIME_CHECKPOINTS), build)

    def render(self, image, labels, target_labels, ctx):
        from .inference import edit_celebamask

        ctx.check()
        return edit_celebamask(self.networks, image, labels, target_labels)

    def transfer(self, image, labels, donor_image, donor_labels, components, ctx):
        from . import preprocess as pp
        from .inference import encode_components, render

        unsupported = [c for c in components if c not in MODEL_COMPONENTS]
        if unsupported:
            raise ValueError(f"{self.name} cannot take {unsupported} alone (it transfers "
                             f"{', '.join(MODEL_COMPONENTS)}); use classic-synthesize for those")
        target = with_components(labels, donor_labels, components)
        own = pp.prepare_face(image, pp.celebamask_to_helen(labels))
        donor = pp.prepare_face(donor_image, pp.celebamask_to_helen(donor_labels))
        import torch

        with torch.inference_mode():
            features = encode_components(self.networks, own)
            donor_features = encode_components(self.networks, donor)
            for component in components:
                for part in MODEL_COMPONENTS[component]:
                    features[part] = donor_features[part]
            layout = pp.prepare_layout(pp.celebamask_to_helen(target))
            output = render(self.networks, features, layout, own.image)
        return pp.to_uint8_image(output[0].cpu().numpy()), np.asarray(target)
