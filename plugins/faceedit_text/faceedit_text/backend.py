"""The offline text backend: free text -> a structured edit (shown to the user first) -> run by the
best ready backends, one step after another, each step's output the next one's input.

Routing (decided before anything runs, so a request that cannot be done fails before any work):
* hair colour, gender, age -> an attribute editor (StarGAN with its weights; hair colour alone also
  by the classical recolouring);
* smile, open mouth, glasses, narrow eyes, eyebrows, make-up -> completion with attributes over the
  matching face components (mouth; eyes and brows);
* shape changes (bigger eyes, wider mouth, nose, eyebrows, hairline) -> label-guided synthesis of the
  parsed labels edited by ``napari_faceedit.label_edits``.
No image: text-to-face with the small DCGAN shipped in ``gan-face-generate``, steered by our
attribute classifier. Anything no ready backend can do is an error naming it, never ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_faceedit import label_edits
from napari_faceedit.backend import Backend, RunContext
from napari_faceedit.params import Param
from napari_faceedit.tasks import (CompleteRequest, EditAttributesRequest, EditTextRequest, Result,
                                   SynthesizeRequest, Task)

ATTRIBUTE_EDITOR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Male", "Young")
# Attributes a completion expresses, and the face components whose region it completes.
COMPLETION_REGIONS = {
    "Smiling": ("mouth",), "Mouth_Slightly_Open": ("mouth",), "Heavy_Makeup": ("eyes", "mouth"),
    "Eyeglasses": ("eyes", "brows"), "Narrow_Eyes": ("eyes",), "Bushy_Eyebrows": ("brows",),
}
# A shape change of amount a (in [-1, 1]) as a label edit; sizes in pixels of a 256 px face crop.
SHAPE_EDITS = {
    "eyes": lambda labels, a, px: label_edits.enlarge_eyes(labels, 1 + 0.35 * a),
    "mouth": lambda labels, a, px: label_edits.widen_mouth(labels, 1 + 0.35 * a),
    "nose": lambda labels, a, px: label_edits.scale_component(labels, "nose", 1 + 0.3 * a),
    "eyebrows": lambda labels, a, px: label_edits.raise_eyebrows(labels, -8 * a * px),  # + = lower
    "hairline": lambda labels, a, px: label_edits.move_hairline(labels, 14 * a * px),  # + = lower
}


@dataclass
class Step:
    task: Task
    backend: str
    what: str
    attributes: dict
    components: tuple = ()


def interpret_text(text: str) -> dict:
    from .interpret import interpret

    return interpret(text).to_dict()


class OfflineTextEdit(Backend):
    name = "text-offline"
    version = "1"
    tasks = frozenset({Task.EDIT_TEXT})
    description = ("Reads your text offline (a keyword lexicon plus the all-MiniLM-L6-v2 sentence model shipped on "
                   "PyPI) as a structured edit you can check and adjust, then runs it with the best installed "
                   "backends: attribute editing, completion with attributes, label-guided synthesis. Without an "
                   "image it generates a 64 px face with a small DCGAN steered by our attribute classifier.")
    limitations = ("English only, rule-based: unusual phrasing may be misread (check the edit before running). It can "
                   "only do what the installed backends can: e.g. gender and age need StarGAN's weights, a smile "
                   "needs the completion model. Generated faces are 64 px sketches (shown at 256, blurry) that follow only hair "
                   "colour, gender and age as our classifier sees them: often distorted, and the optimisation tends "
                   "to lighten skin (a bias of the CelebA classifier it follows).")
    per_face = True
    uses_torch = True
    priority = 20
    parameters = (Param("steps", 150, "text-to-face: optimisation steps of the DCGAN latent", min=1, max=2000),)

    @staticmethod
    def interpret(text: str) -> dict:
        """The structured edit for ``text`` (what the Text widget shows before running)."""
        return interpret_text(text)

    def plan(self, edit, ctx: RunContext) -> list[Step]:
        values = {change.attribute: float(change.value) for change in edit.attributes}
        strength = max([change.strength for change in edit.attributes], default=1.0)
        steps, missing = [], []
        editor = {a: v for a, v in values.items() if a in ATTRIBUTE_EDITOR}
        if editor:
            name = ctx.find_backend(Task.EDIT_ATTRIBUTES, tuple(editor))
            if name is None:  # several editors may share the work (e.g. hair colour alone)
                for attribute, value in editor.items():
                    single = ctx.find_backend(Task.EDIT_ATTRIBUTES, (attribute,))
                    if single is None:
                        missing.append(attribute)
                    else:
                        steps.append(Step(Task.EDIT_ATTRIBUTES, single, attribute, {attribute: value, "_strength": strength}))
            else:
                steps.append(Step(Task.EDIT_ATTRIBUTES, name, ", ".join(editor), {**editor, "_strength": strength}))
        for attribute, value in values.items():
            if attribute in ATTRIBUTE_EDITOR:
                continue
            regions = COMPLETION_REGIONS.get(attribute)
            name = ctx.find_backend(Task.COMPLETE, (attribute,)) if regions else None
            if name is None:
                missing.append(attribute)
            else:
                steps.append(Step(Task.COMPLETE, name, attribute, {attribute: value}, regions))
        if edit.shapes:
            name = ctx.find_backend(Task.SYNTHESIZE)
            if name is None:
                missing.extend(f"{change.component} shape" for change in edit.shapes)
            else:
                steps.append(Step(Task.SYNTHESIZE, name, ", ".join(c.component for c in edit.shapes), {}))
        if missing:
            raise ValueError(f"no ready backend can do {', '.join(missing)} here (install or get the weights of "
                             "a backend that supports it, or untick it in the edit)")
        return steps

    def run(self, request: EditTextRequest, ctx: RunContext) -> Result:
        from .interpret import StructuredEdit

        edit = StructuredEdit.from_dict(request.edit if request.edit is not None else self.interpret(request.text))
        ctx.note(f"edit: {edit.to_dict()}")
        if edit.is_empty:
            raise ValueError(edit.message or f"nothing in {request.text!r} is an edit this backend can make")
        if request.image is None:
            return self.generate(edit, ctx)
        steps = self.plan(edit, ctx)
        image = request.image
        for number, step in enumerate(steps, start=1):
            ctx.check()
            ctx.progress(number - 1, len(steps), f"step {number}/{len(steps)}: {step.what} with {step.backend}")
            image = ctx.delegate(self.step_request(step, image, edit, request, ctx), step.backend).image
        ctx.progress(len(steps), len(steps), "done")
        return Result(image=image)

    def step_request(self, step: Step, image: np.ndarray, edit, request: EditTextRequest, ctx: RunContext):
        common = dict(device=request.device, seed=request.seed, face_index=request.face_index,
                      landmarks=request.landmarks)
        if step.task is Task.EDIT_ATTRIBUTES:
            attributes = {k: v for k, v in step.attributes.items() if k != "_strength"}
            return EditAttributesRequest(image=image, attributes=attributes, strength=step.attributes["_strength"],
                                         **common)
        if step.task is Task.COMPLETE:
            return CompleteRequest(image=image, components=step.components, attributes=step.attributes, **common)
        labels = ctx.parse(image, request.face_index)
        face_scale = max(np.sqrt((labels != 0).sum()) / 150.0, 0.2)  # 256 px crops hold a ~150 px face
        target = labels
        for change in edit.shapes:
            target = SHAPE_EDITS[change.component](target, change.amount, face_scale)
        return SynthesizeRequest(image=image, labels=labels, target_labels=target, **common)

    def generate(self, edit, ctx: RunContext) -> Result:
        from .text_to_face import generate_face

        if edit.shapes:
            raise ValueError("text-to-face cannot follow shape changes (bigger eyes, ...): give an image to edit")
        image, report = generate_face(edit.attribute_values(), steps=ctx.params["steps"], seed=ctx.seed,
                                      progress=ctx.progress, cancelled=ctx.cancelled)
        ctx.note(f"text-to-face (DCGAN 64 px, upsampled): {report}")
        return Result(image=image)
