"""Free text -> structured face edit, shown to the user before any backend runs.

``interpret("make her hair blond and add a smile")`` returns a :class:`StructuredEdit` with CelebA
attribute changes (``Blond_Hair`` = 1, ``Smiling`` = 1), region shape changes (bigger eyes, a wider
mouth, a lower hairline, ...) and the phrases it did not understand, plus a message for the user.

How a text is read:

1. Normalise (lowercase, spelling variants, "n't" -> " not", "unsmiling" -> "not smiling") and cut it
   to :data:`MAX_TEXT_CHARS` characters.
2. Split into clauses at punctuation and joining words (and, but, with, plus, or, instead of, ...);
   "without" starts a clause and stays in it. At most :data:`MAX_CLAUSES` clauses are read.
3. Find cues in each clause with a keyword lexicon: attribute words ("blond", "glasses", "older"),
   a region ("eyes", "nose") with a size word ("bigger", "narrower"), and unsupported requests
   ("bald", "hat", "red hair") that are reported rather than guessed at.
4. A clause with content but no cue is compared, by all-MiniLM-L6-v2 sentence embeddings, with
   several descriptions of every supported edit (and of unsupported ones); it is accepted when the
   best supported edit is similar enough and clearly ahead of the rest, and goes to ``unknown``
   otherwise. This is what catches paraphrases the lexicon lacks ("a grin", "spectacles").
5. Negation flips the value: prefix words (no, not, without, remove, stop, less, no longer, take off,
   ...) act on the cues after them, suffix words (off, removed, gone) on those before them. A bare
   clause after "and"/"or" inherits the previous clause's negation and size word ("remove the beard
   and mustache", "no glasses or beard").
6. Strength: "slightly/a bit/a little" -> low, "very/much/a lot/really" -> high; otherwise a
   comparative ("older", "more makeup", "less smile") -> medium and a plain request ("glasses",
   "no beard") -> high. Shape changes are medium unless an intensity word says otherwise.
7. Contradictions (two hair colours, "smile and frown", "bigger and smaller eyes") are left out of
   the edit and explained in the message.
"""
from __future__ import annotations

import re
import unicodedata
import weakref
from dataclasses import asdict, dataclass, field

import torch

from napari_faceedit.vocab import CELEBA_ATTRIBUTES, HAIR_COLOR_ATTRIBUTES

LOW, MEDIUM, HIGH = 0.3, 0.6, 1.0
MAX_TEXT_CHARS = 2000  # longer texts are cut (and the message says so): keeps the work bounded
MAX_CLAUSES = 32
MAX_CLAUSE_TOKENS = 64  # word pieces per clause given to the embedding model

# Embedding acceptance, tuned on tests/data/text_phrases_tune.tsv (see SCHEMA.md).
ACCEPT_SIMILARITY = 0.50  # best supported description must be at least this close (cosine)
ACCEPT_MARGIN = 0.06  # ... and ahead of every other edit (supported or not) by this much
LEXICON_CONFIDENCE = 0.95  # a keyword, and every other word of the clause is a function word
PARTLY_READ_CONFIDENCE = 0.8  # a keyword, but the clause has words that were not read
BORROWED_CONFIDENCE = 0.85  # negation or size borrowed from the clause before ("... and mustache")
MIN_EMBEDDING_CONFIDENCE = 0.3
LEFTOVER_SIMILARITY = 0.6  # stricter for words left beside a keyword ("a GRINNING young man")  # combined score (see _embedding_matches) below which a match is refused
UNSUPPORTED_SIMILARITY = 0.45  # a clause this close to an unsupported edit is named as such

SHAPE_COMPONENTS = ("eyes", "eyebrows", "nose", "mouth", "hairline")


# ---------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------

@dataclass
class AttributeChange:
    attribute: str  # CelebA attribute name, e.g. "Blond_Hair"
    value: float  # 1 = the face should have it, 0 = it should not
    strength: float  # in (0, 1]: how far to push towards ``value``
    confidence: float  # in [0, 1]: how sure the interpretation is
    phrase: str  # the words it came from
    source: str = "lexicon"  # "lexicon" (a keyword) or "embedding" (sentence similarity)

    def __post_init__(self):
        if self.attribute not in CELEBA_ATTRIBUTES:
            raise ValueError(f"unknown CelebA attribute {self.attribute!r}")
        if self.value not in (0, 1):
            raise ValueError(f"attribute value must be 0 or 1, got {self.value!r}")
        if not 0 < self.strength <= 1 or not 0 <= self.confidence <= 1:
            raise ValueError(f"strength must lie in (0, 1] and confidence in [0, 1]: {self}")


@dataclass
class ShapeChange:
    component: str  # one of SHAPE_COMPONENTS
    amount: float  # in [-1, 1]: + bigger / wider / lower, - smaller / narrower / higher
    confidence: float
    phrase: str
    source: str = "lexicon"

    def __post_init__(self):
        if self.component not in SHAPE_COMPONENTS:
            raise ValueError(f"shape component must be one of {SHAPE_COMPONENTS}, got {self.component!r}")
        if not 0 < abs(self.amount) <= 1 or not 0 <= self.confidence <= 1:
            raise ValueError(f"amount must lie in [-1, 1] without 0 and confidence in [0, 1]: {self}")


@dataclass
class StructuredEdit:
    attributes: list[AttributeChange] = field(default_factory=list)
    shapes: list[ShapeChange] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # phrases not understood or not supported
    message: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.attributes and not self.shapes

    def attribute_values(self) -> dict[str, float]:
        """``{"Blond_Hair": 1.0, ...}``: the targets alone, as attribute backends take them."""
        return {change.attribute: float(change.value) for change in self.attributes}

    def to_dict(self) -> dict:
        return {
            "attributes": [asdict(change) for change in self.attributes],
            "shapes": [asdict(change) for change in self.shapes],
            "unknown": list(self.unknown),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "StructuredEdit":
        return cls(
            attributes=[AttributeChange(**item) for item in data.get("attributes", [])],
            shapes=[ShapeChange(**item) for item in data.get("shapes", [])],
            unknown=[str(item) for item in data.get("unknown", [])],
            message=str(data.get("message", "")),
        )

    def describe(self) -> str:
        """Plain-language plan for the user to confirm before running."""
        lines = []
        if self.is_empty:
            lines.append("No edit will be made.")
        else:
            lines.append("Planned edit:")
        for change in self.attributes:
            entry = _SUPPORTED_BY_NAME[change.attribute]
            action = entry.when_set if change.value == 1 else entry.when_cleared
            lines.append(
                f"  - {action} ({change.attribute}={int(change.value)}, {_strength_word(change.strength)}, "
                f"confidence {change.confidence:.0%}) from \"{change.phrase}\""
            )
        for change in self.shapes:
            entry = _SUPPORTED_BY_NAME[f"shape:{change.component}"]
            action = entry.when_set if change.amount > 0 else entry.when_cleared
            lines.append(
                f"  - {action} (amount {change.amount:+.1f}, confidence {change.confidence:.0%}) "
                f"from \"{change.phrase}\""
            )
        if self.unknown:
            lines.append("Not understood or not supported: " + ", ".join(f'"{p}"' for p in self.unknown))
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)


def _strength_word(strength: float) -> str:
    band = "slight" if strength <= 0.4 else "moderate" if strength < 0.8 else "full"
    return f"{band} strength {strength:.1f}"


# ---------------------------------------------------------------------------------------------
# What can be done (drives the user message, ``describe`` and the embedding descriptions)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Supported:
    name: str  # CelebA attribute, or "shape:<component>"
    group: str  # how the message lists it
    when_set: str  # describe() wording for value 1 / a positive amount
    when_cleared: str  # ... for value 0 / a negative amount
    set_descriptions: tuple[str, ...]  # embedding descriptions of value 1 / a positive amount
    cleared_descriptions: tuple[str, ...] = ()  # ... of value 0 / a negative amount


SUPPORTED: tuple[Supported, ...] = (
    Supported("Black_Hair", "hair colour (black, blond, brown, gray)", "black hair", "hair not black",
              ("black hair", "jet black hair", "dye the hair black", "raven-black hair", "dark hair")),
    Supported("Blond_Hair", "hair colour (black, blond, brown, gray)", "blond hair", "hair not blond",
              ("blond hair", "golden hair", "platinum blonde", "a blonde", "fair yellow hair")),
    Supported("Brown_Hair", "hair colour (black, blond, brown, gray)", "brown hair", "hair not brown",
              ("brown hair", "a brunette", "chestnut brown hair", "dye the hair brown")),
    Supported("Gray_Hair", "hair colour (black, blond, brown, gray)", "gray hair", "hair not gray",
              ("gray hair", "silver hair", "white hair of an old person", "greying hair")),
    Supported("Male", "gender (man / woman)", "make male", "make female",
              ("a man", "a masculine face", "a guy", "a gentleman", "make the person a man"),
              ("a woman", "a feminine face", "a lady", "a girl", "make the person a woman")),
    Supported("Young", "age (younger / older)", "make younger", "make older",
              ("a young person", "a youthful face", "a teenager", "a child", "make them look younger",
               "a person in their twenties"),
              ("an old person", "an elderly face", "a wrinkled aged face", "make them look older",
               "a senior citizen", "a grandparent")),
    Supported("Smiling", "smile", "add a smile", "remove the smile",
              ("smiling", "a big smile", "a grin", "a happy expression", "laughing", "beaming with joy"),
              ("a serious expression", "a frown", "a neutral face", "a sad face", "a stern look")),
    Supported("Mouth_Slightly_Open", "open / closed mouth", "open the mouth slightly", "close the mouth",
              ("mouth slightly open", "parted lips", "an open mouth", "lips apart"),
              ("a closed mouth", "lips pressed together", "mouth shut")),
    Supported("Eyeglasses", "glasses", "add glasses", "remove glasses",
              ("wearing glasses", "eyeglasses", "spectacles", "sunglasses", "reading glasses", "specs")),
    Supported("Heavy_Makeup", "makeup", "add makeup", "remove makeup",
              ("heavy makeup", "wearing cosmetics", "eyeliner and eyeshadow", "glamorous makeup",
               "a made-up face"),
              ("a natural face without makeup", "a bare face", "make-up free")),
    Supported("Bushy_Eyebrows", "bushy / thin eyebrows", "bushy eyebrows", "thin eyebrows",
              ("bushy eyebrows", "thick eyebrows", "heavy brows", "full unibrow"),
              ("thin eyebrows", "plucked eyebrows", "sparse brows")),
    Supported("Narrow_Eyes", "narrow eyes", "narrow the eyes", "open the eyes wide",
              ("narrow eyes", "squinting", "half-closed eyes", "squinty eyes", "slitted eyes"),
              ("wide open eyes", "wide-eyed", "eyes opened wide")),
    Supported("No_Beard", "beard / goatee / mustache", "remove the beard (clean-shaven)", "add a beard",
              ("clean-shaven", "no beard", "a shaved face", "a smooth chin"),
              ("a beard", "a full beard", "bearded", "facial hair", "whiskers")),
    Supported("Goatee", "beard / goatee / mustache", "add a goatee", "remove the goatee",
              ("a goatee", "a small chin beard", "a goatee beard")),
    Supported("Mustache", "beard / goatee / mustache", "add a mustache", "remove the mustache",
              ("a mustache", "a moustache", "hair on the upper lip", "a handlebar mustache")),
    Supported("shape:eyes", "size of eyes, eyebrows, nose, mouth", "bigger eyes", "smaller eyes",
              ("bigger eyes", "larger eyes", "enlarge the eyes", "huge eyes"),
              ("smaller eyes", "tiny eyes", "shrink the eyes")),
    Supported("shape:eyebrows", "size of eyes, eyebrows, nose, mouth", "bigger eyebrows", "smaller eyebrows",
              ("bigger eyebrows", "longer eyebrows", "larger brows"),
              ("smaller eyebrows", "shorter eyebrows", "smaller brows")),
    Supported("shape:nose", "size of eyes, eyebrows, nose, mouth", "bigger nose", "smaller nose",
              ("a bigger nose", "a longer nose", "a larger nose", "a wide nose"),
              ("a smaller nose", "a tiny nose", "a narrower nose", "a shorter nose")),
    Supported("shape:mouth", "size of eyes, eyebrows, nose, mouth", "wider mouth", "smaller mouth",
              ("a wider mouth", "fuller lips", "a bigger mouth", "plump lips"),
              ("a smaller mouth", "thinner lips", "a narrow mouth")),
    Supported("shape:hairline", "hairline (lower / higher)", "lower hairline", "higher hairline",
              ("a lower hairline", "a smaller forehead", "bring the hairline down"),
              ("a receding hairline", "a higher hairline", "a bigger forehead")),
)
_SUPPORTED_BY_NAME = {entry.name: entry for entry in SUPPORTED}

# Requests the editors cannot do. They are recognised so that they are named in the message instead
# of being matched to the nearest supported edit (a hat is not glasses, red hair is not brown).
UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "stubble": ("stubble", "five o'clock shadow", "a day's growth of stubble"),
    "arched eyebrows": ("arched eyebrows", "high arched brows"),
    "attractiveness": ("more attractive", "prettier", "more beautiful", "handsome"),
    "bags under the eyes": ("bags under the eyes", "dark circles under the eyes", "tired eyes"),
    "baldness": ("bald", "a bald head", "no hair on the head", "a shaved head"),
    "bangs": ("bangs", "a fringe"),
    "image sharpness (use Restore)": ("blurry", "sharper photo", "out of focus", "deblur the image"),
    "body weight": ("chubby", "fatter", "a thinner face", "slimmer", "a double chin", "lose weight"),
    "cheekbones and face shape": ("high cheekbones", "an oval face", "a round face", "a square jaw"),
    "skin tone": ("pale skin", "tanned skin", "darker skin", "lighter skin", "skin colour", "freckles"),
    "nose form": ("a pointy nose", "a hooked nose", "a button nose"),
    "rosy cheeks": ("rosy cheeks", "blush on the cheeks"),
    "sideburns": ("sideburns", "long sideburns"),
    "hair texture": ("curly hair", "wavy hair", "straight hair", "frizzy hair", "an afro"),
    "hair length and style": ("long hair", "short hair", "a haircut", "a ponytail", "a bun", "dreadlocks"),
    "other hair colours (only black, blond, brown, gray)": (
        "red hair", "ginger hair", "a redhead", "pink hair", "blue hair", "green hair", "purple hair"),
    "eye colour": ("blue eyes", "green eyes", "brown eyes", "change the eye colour"),
    "earrings": ("earrings", "wearing earrings"),
    "hats": ("a hat", "wearing a cap", "a beanie", "a crown"),
    "lipstick": ("lipstick", "red lips"),
    "necklaces": ("a necklace", "a chain around the neck"),
    "neckties": ("a necktie", "wearing a tie", "a bow tie"),
    "accessories and body marks": ("a tattoo", "a piercing", "a scar", "face paint"),
    "head pose and gaze": ("turn the head", "look to the left", "tilt the head", "look at the camera"),
    "other expressions": ("angry", "surprised", "crying", "scared", "wink"),
    "background, clothes and lighting": ("change the background", "a different shirt", "brighter lighting"),
    "ears, neck, teeth, cheeks, eyelashes and head size": (
        "bigger ears", "a longer neck", "whiter teeth", "longer eyelashes", "a bigger head", "dimples"),
    "image style": ("a black and white photo", "cartoon style", "an oil painting", "a vintage filter"),
}


def supported_summary() -> str:
    """One line listing what the text interpreter can ask the editors for."""
    groups = list(dict.fromkeys(entry.group for entry in SUPPORTED))
    return "I can change: " + ", ".join(groups) + "."


# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------

def _words(*alternatives: str) -> str:
    return r"\b(?:" + "|".join(alternatives) + r")\b"


@dataclass(frozen=True)
class Cue:
    pattern: re.Pattern
    attribute: str  # CelebA name, or "" for an unsupported request
    value: int = 1
    comparative: bool = False  # "older": a change by degree, medium strength
    strength: float | None = None  # fixed strength for words that carry one ("light makeup")
    unsupported: str = ""  # label of an unsupported request


def _cue(pattern: str, attribute: str, value: int = 1, comparative: bool = False,
         strength: float | None = None) -> Cue:
    return Cue(re.compile(pattern), attribute, value, comparative, strength)


def _unsupported(pattern: str, label: str) -> Cue:
    return Cue(re.compile(pattern), "", unsupported=label)


# Left out on purpose, to be matched by the embedding: "grin", "spectacles", "teenager" and the like.
ATTRIBUTE_CUES: tuple[Cue, ...] = (
    _cue(_words("man", "male", "masculine", "manly", "boy", "boyish", "guy", "gentleman", "masculinity"),
         "Male", 1),
    _cue(_words("manlier", "more masculine"), "Male", 1, comparative=True),
    _cue(_words("woman", "female", "feminine", "womanly", "girl", "girlish", "lady", "femininity"),
         "Male", 0),
    _cue(_words("girlier", "more feminine"), "Male", 0, comparative=True),
    _cue(_words("young", "youthful", "teen", "teenage", "kid", "child", "baby-faced", "baby face", "de-age",
                r"in (?:his|her|their) (?:teens|twenties)"), "Young", 1),
    _cue(_words("younger", "rejuvenate", "rejuvenated"), "Young", 1, comparative=True),
    _cue(_words("old", "elderly", "aged", "senior", "wrinkles", "wrinkled", "wrinkly", "grandpa", "grandma",
                "grandfather", "grandmother", "middle-aged", r"age (?:him|her|them)"), "Young", 0),
    _cue(_words("older", "ageing", "aging"), "Young", 0, comparative=True),
    _cue(_words("smile", "smiles", "smiling", "smiley", "laugh", "laughing", "happy", "cheerful",
                "joyful"), "Smiling", 1),
    _cue(_words("happier", "cheerier"), "Smiling", 1, comparative=True),
    _cue(_words("frown", "frowning", "serious", "sad", "stern", "grumpy", "unhappy", "straight face",
                "poker face", "neutral expression", "neutral face"), "Smiling", 0),
    _cue(_words("sadder", "more serious"), "Smiling", 0, comparative=True),
    _cue(_words(r"open(?:s|ed|ing)?(?: \w+){0,2} mouth", r"mouth(?: \w+){0,2} open(?:ed)?", "open-mouthed",
                "parted lips", r"lips(?: \w+){0,2} parted", r"part(?: \w+)? lips"), "Mouth_Slightly_Open", 1),
    _cue(_words(r"(?:close|closes|closed|shut)(?: \w+){0,2} mouth", r"mouth(?: \w+){0,2} (?:closed|shut)",
                r"lips(?: \w+){0,2} (?:together|sealed|closed)"), "Mouth_Slightly_Open", 0),
    _cue(_words("glasses", "eyeglasses", "sunglasses", "bespectacled"), "Eyeglasses", 1),
    _cue(_words("light makeup", "subtle makeup", "natural makeup"), "Heavy_Makeup", 1, strength=LOW),
    _cue(_words("makeup", "cosmetics", "mascara", "eyeliner", "eyeshadow", "eye shadow", "made up", "glam"),
         "Heavy_Makeup", 1),
    _cue(_words("beard", "beards", "bearded", "facial hair", "full beard"), "No_Beard", 0),
    _cue(_words("beardless", "clean-shaven", "clean shaven", "shaven", "shaved", "shave"), "No_Beard", 1),
    _cue(_words("goatee", "goatees"), "Goatee", 1),
    _cue(_words("mustache", "mustaches", "mustached", "tache"), "Mustache", 1),
    _cue(_words("squint", "squints", "squinting", "squinty"), "Narrow_Eyes", 1),
    _cue(_words("wide-eyed", "wide open eyes", r"eyes(?: \w+){0,2} wide open", r"open(?: \w+){0,2} eyes"),
         "Narrow_Eyes", 0),
)

UNSUPPORTED_CUES: tuple[Cue, ...] = (
    _unsupported(_words(r"(?:turn|tilt|rotate|tilted|turned)(?: \w+)? head", r"head (?:turned|tilted)",
                        r"look(?:ing)? (?:left|right|up|down|away|sideways|at the camera)"), "head pose and gaze"),
    _unsupported(_words("stubble", "stubbly", "five o'clock shadow", "5 o'clock shadow"), "stubble"),
    _unsupported(_words("arched"), "arched eyebrows"),
    _unsupported(_words("attractive", "prettier", "pretty", "beautiful", "handsome", "ugly", "uglier",
                        "cuter", "cute", "sexier"), "attractiveness"),
    _unsupported(_words("bags under", "dark circles", "eye bags"), "bags under the eyes"),
    _unsupported(_words("bald", "balding", "hairless"), "baldness"),
    _unsupported(_words("bangs", "fringe"), "bangs"),
    _unsupported(_words("blurry", "blurred", "sharpen", "sharper", "deblur", "focus"),
                 "image sharpness (use Restore)"),
    _unsupported(_words("chubby", "chubbier", "fat", "fatter", "thin face", "thinner face", "slimmer",
                        "slim", "skinny", "double chin", "weight"), "body weight"),
    _unsupported(_words("cheekbones", "oval face", "round face", "jaw", "jawline", "chin"),
                 "cheekbones and face shape"),
    _unsupported(_words("pale", "paler", "tan", "tanned", "skin", "freckles", "complexion"), "skin tone"),
    _unsupported(_words("pointy", "pointed", "hooked", "button nose"), "nose form"),
    _unsupported(_words("rosy", "blush", "blushing"), "rosy cheeks"),
    _unsupported(_words("sideburns"), "sideburns"),
    _unsupported(_words("curly", "curlier", "curls", "wavy", "wavier", "waves", "straight hair",
                        "straighter", "frizzy", "afro"), "hair texture"),
    _unsupported(_words(r"(?:long|longer|short|shorter) hair", "haircut", "ponytail", "bun", "braids",
                        "dreadlocks", "hairstyle", "mohawk"), "hair length and style"),
    _unsupported(_words("redhead", "ginger", "auburn"),
                 "other hair colours (only black, blond, brown, gray)"),
    _unsupported(_words(r"(?:blue|green|hazel|brown|gray|black|amber|violet|red) eyes?", "eye colou?r"),
                 "eye colour"),
    _unsupported(_words("earring", "earrings"), "earrings"),
    _unsupported(_words("hat", "hats", "cap", "beanie", "helmet", "crown", "hood"), "hats"),
    _unsupported(_words("lipstick", "lip gloss", "red lips"), "lipstick"),
    _unsupported(_words("necklace", "necklaces", "chain"), "necklaces"),
    _unsupported(_words("necktie", "tie", "bow tie", "bowtie"), "neckties"),
    _unsupported(_words("tattoo", "tattoos", "piercing", "piercings", "scar", "scars", "face paint"),
                 "accessories and body marks"),
    _unsupported(_words("angry", "angrier", "surprised", "crying", "cry", "scared", "wink", "winking"),
                 "other expressions"),
    _unsupported(_words("background", "shirt", "clothes", "dress", "jacket", "lighting"),
                 "background, clothes and lighting"),
    _unsupported(_words("ears?", "earlobes?", "neck", "teeth", "tooth", "fangs", "cheeks?", "dimples?",
                        "eyelash(?:es)?", "lashes", "head", "pupils?", "iris(?:es)?"),
                 "ears, neck, teeth, cheeks, eyelashes and head size"),
    _unsupported(_words("black-and-white", "grayscale", "sepia", "cartoon", "painting", "anime", "sketch",
                        "drawing", "filter", "vintage", "colorize"), "image style"),
)

# Hair colour words. Hair-only words count anywhere; common colour words only where hair is the topic.
HAIR_ONLY_COLORS: dict[str, str] = {
    "blond": "Blond_Hair", "blonder": "Blond_Hair", "platinum": "Blond_Hair", "towheaded": "Blond_Hair",
    "brunette": "Brown_Hair", "gray": "Gray_Hair", "grayer": "Gray_Hair", "graying": "Gray_Hair",
    "gray-haired": "Gray_Hair", "white-haired": "Gray_Hair", "silver-haired": "Gray_Hair",
    "salt-and-pepper": "Gray_Hair", "black-haired": "Black_Hair", "blond-haired": "Blond_Hair",
    "brown-haired": "Brown_Hair",
}
COMMON_COLORS: dict[str, str] = {
    "black": "Black_Hair", "jet": "Black_Hair", "raven": "Black_Hair", "dark": "Black_Hair",
    "darker": "Black_Hair", "brown": "Brown_Hair", "chestnut": "Brown_Hair", "golden": "Blond_Hair",
    "fair": "Blond_Hair", "light": "Blond_Hair", "lighter": "Blond_Hair", "yellow": "Blond_Hair",
    "white": "Gray_Hair", "silver": "Gray_Hair",
}
SHADE_MODIFIERS = {"dark", "darker", "light", "lighter", "jet", "raven", "fair"}  # "dark brown" is brown
COMPARATIVE_COLORS = {"blonder", "grayer", "darker", "lighter"}
OTHER_HAIR_COLORS = {"red", "pink", "blue", "green", "purple", "orange", "copper", "rainbow", "violet",
                      "teal", "strawberry"}
HAIR_TOPIC = re.compile(r"\b(?:hair|haired|dye|dyed|dyes)\b")
NOT_HAIR_TOPIC = re.compile(r"\b(?:eyes?|skin|lips|shirt|dress|clothes|background|jacket|suit|tie|hat|cap|"
                            r"eyebrows|beard|mustache|goatee|makeup)\b")

COMPONENT_WORDS: dict[str, str] = {
    "eye": "eyes", "eyes": "eyes", "eyebrow": "eyebrows", "eyebrows": "eyebrows", "brow": "eyebrows",
    "brows": "eyebrows", "nose": "nose", "nostrils": "nose", "mouth": "mouth", "lips": "mouth",
    "lip": "mouth", "hairline": "hairline", "forehead": "hairline",
}
GROW_WORDS = {"bigger", "larger", "big", "large", "wider", "wide", "widen", "broader", "broad", "longer",
              "long", "enlarge", "enlarged", "increase", "grow", "fuller", "full", "plumper", "plump", "huge",
              "enormous", "giant", "lower", "lowered", "low"}
SHRINK_WORDS = {"smaller", "small", "narrower", "narrow", "thinner", "thin", "shorter", "short", "shrink",
                "shrunk", "reduce", "reduced", "tinier", "tiny", "slimmer", "slim", "higher", "raise",
                "raised", "receding", "recede", "receded", "lift", "lifted", "high"}
VERTICAL_WORDS = {"lower", "lowered", "low", "higher", "high", "raise", "raised", "lift", "lifted", "receding",
                  "recede", "receded"}
GROW_PHRASES = re.compile(r"\b(?:bring|move|push) (?:\w+ )?(?:hairline )?down\b")
SHRINK_PHRASES = re.compile(r"\b(?:move|push) (?:\w+ )?(?:hairline )?(?:up|back)\b")
COMPARATIVE_SIZE = {"bigger", "larger", "wider", "broader", "longer", "fuller", "plumper", "lower",
                    "smaller", "narrower", "thinner", "shorter", "tinier", "slimmer", "higher"}
BUSHY_WORDS = {"bushy", "bushier", "thick", "thicker", "heavy", "heavier", "dense", "denser", "fuller"}
THIN_BROW_WORDS = {"thin", "thinner", "pluck", "plucked", "sparse", "sparser", "fine", "finer"}
MOUTH_OPENING = re.compile(_words("open", "opens", "opened", "close", "closed", "shut", "parted", "apart"))
EYES_OPENING = re.compile(_words("open", "opened", "wide-eyed"))
NARROW_EYE_WORDS = {"narrow", "narrower", "slit", "slitted", "half-closed", "squinty", "sleepy"}
# Comparatives that make an embedding-matched request a change by degree ("make her look happier").
COMPARATIVE_HINTS = {"older", "younger", "happier", "sadder", "bigger", "larger", "smaller", "wider",
                     "narrower", "thicker", "thinner", "longer", "shorter", "higher", "lower", "fuller",
                     "stronger", "weaker", "deeper",
                     "darker", "lighter", "manlier", "girlier", "bushier", "heavier", "cheerier",
                     "merrier", "livelier", "friendlier", "gloomier", "grumpier", "wiser", "fresher"}
COMPARATIVE_TRAIT_WORDS = {"bushier", "thicker", "heavier", "denser", "fuller", "thinner", "sparser",
                           "finer", "narrower"}

PREFIX_NEGATORS = re.compile(_words(
    "no longer", "no more", "not anymore", "get rid of", "rid of", "take off", "take away", "takes off",
    "wipe off", "wipe away", "shave off", "shaved off", "shave away", "instead of", "rather than",
    "no", "not", "without", "remove", "removes", "removing", "delete", "erase", "eliminate", "lose",
    "ditch", "drop", "stop", "stops", "quit", "never", "less", "fewer", "minus", "lose", "cut",
    "nothing", "none", "neither", "nor", "too much", "too many", "too",
))
POSTFIX_NEGATORS = re.compile(_words("off", "removed", "gone", "away"))
COMPARATIVE_WORDS = COMPARATIVE_SIZE | COMPARATIVE_HINTS
# A clause with its own size or degree word is not a bare item borrowing from the clause before.
DEGREE_WORDS = (GROW_WORDS | SHRINK_WORDS | BUSHY_WORDS | THIN_BROW_WORDS | NARROW_EYE_WORDS
                | COMPARATIVE_HINTS | {"more"})
# "less makeup" and "too old" ask for a change by degree, not a removal.
WEAK_NEGATORS = {"less", "fewer", "too", "too much", "too many"}
LOW_INTENSITY = re.compile(_words(
    "slightly", "slight", "a bit", "a little", "a little bit", "a tiny bit", "tiny bit", "a wee bit",
    "a tad", "a touch", "somewhat", "subtly",
    "subtle", "mildly", "mild", "gently", "faintly", "faint", "a hint", "hint of", "lightly", "marginally",
    "barely", "kinda", "kind of", "sort of", "a smidge", "a small amount",
))
HIGH_INTENSITY = re.compile(_words(
    "very", "much", "a lot", "lots", "really", "extremely", "super", "totally", "completely", "fully",
    "way", "heavily", "strongly", "drastically", "dramatically", "significantly", "massively", "hugely",
    "huge", "enormous", "enormously", "tiny", "far", "a great deal", "considerably", "seriously",
    "so much", "intensely", "way more",
))

INTENSITY_SPLIT = re.compile(LOW_INTENSITY.pattern + "|" + HIGH_INTENSITY.pattern)
# Function words: a clause made of these alone carries no request ("please", "and also make her").
FILLER_WORDS = set("""
a an the some any this that these those it its of to in into on onto at for from by as like
make makes made making turn turns turned give gives given add adds added put puts set let lets have has
had get gets be is are was were been being become becomes should would could can will shall may might must
do does did want wants wanted need needs i me my we us our you your he him his she her hers they them their
person people face photo picture image portrait look looks looking appear appears seem seems please thanks
thank just also now again then too so more bit lot little much very really slightly one ones same change
changes changed keep kept bring show try maybe perhaps okay ok hey yes kind sort way thing things them
and but with plus or nor while well here there up down please wear wears wearing pair all at any
entirely hair yes about i'd i'll i'm we'd you'd let's it's she's he's that's there's id im
""".split())

SPLIT_PHRASES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("as", "well", "as"), "and"), (("and", "also"), "and"), (("and", "then"), "and"),
    (("along", "with"), "with"), (("together", "with"), "with"), (("instead", "of"), "instead"),
    (("rather", "than"), "instead"), (("and",), "and"), (("but",), "but"), (("with",), "with"),
    (("plus",), "with"), (("also",), "also"), (("then",), "also"), (("or",), "or"), (("nor",), "or"),
    (("while",), "with"), (("&",), "and"), (("+",), "and"),
)
ELLIPSIS_JOINERS = {"and", "or"}  # "no glasses or beard": the second clause borrows "no"
# A clause with one of these states its own request, so it borrows nothing from the clause before.
ACTION_WORDS = re.compile(_words(
    "add", "adds", "give", "gives", "put", "make", "makes", "turn", "want", "with", "a", "an", "some",
    "keep", "have", "needs", "should", "dye", "shave", "open", "close", "raise", "lower", "enlarge",
    "shrink", "widen", "darken", "lighten", "apply", "grow", "let", "paint", "wear", "bring", "move", "push",
))
TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[,;.!?:()&+\n]")
PUNCTUATION = set(",;.!?:()\n")

SPELLING = (
    (re.compile(r"[\u2018\u2019\u02bc`]"), "'"),
    (re.compile(r"\b(?:can|won|don|doesn|didn|isn|aren|wasn|shouldn|wouldn|couldn)'t\b"),
     lambda m: {"won't": "will not", "can't": "can not"}.get(m.group(0), m.group(0)[:-3] + " not")),
    (re.compile(r"\bblonde\b"), "blond"), (re.compile(r"\bgrey"), "gray"), (re.compile(r"\bgreying\b"), "graying"),
    (re.compile(r"\bmoustache"), "mustache"), (re.compile(r"\bmake[- ]?up\b"), "makeup"),
    (re.compile(r"\beye[- ]brows?\b"), lambda m: "eyebrows" if m.group(0).endswith("s") else "eyebrow"),
    (re.compile(r"\bhair[- ]line\b"), "hairline"), (re.compile(r"\bsalt[- ]and[- ]pepper\b"), "salt-and-pepper"),
    (re.compile(r"\bblack[- ]and[- ]white\b"), "black-and-white"),
    (re.compile(r"\bcolour"), "color"),
)
# "the man" / "this woman" name the subject; they are not requests to change its gender or age.
SUBJECT_REFERENCE = re.compile(
    r"\b(?:the|this|that|these|those)\s+(?:\w+\s+){0,2}?"
    r"(?:man|woman|guy|lady|boy|girl|person|gentleman|kid|child|men|women|people|one)\b(?:'s)?"
)
UN_PREFIX = re.compile(r"\bun-?([a-z]+)\b")


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(char for char in text if unicodedata.category(char) != "Mn")  # "blönd" -> "blond"
    for pattern, replacement in SPELLING:
        text = pattern.sub(replacement, text)
    text = SUBJECT_REFERENCE.sub(" them ", text)
    return UN_PREFIX.sub(_expand_un_prefix, text)


def _expand_un_prefix(match: re.Match) -> str:
    """"unsmiling" -> "not smiling" when the rest is one of our cue words; "under" stays "under"."""
    rest = match.group(1)
    for cue in ATTRIBUTE_CUES:
        if cue.pattern.fullmatch(rest):
            return "not " + rest
    return match.group(0)


# ---------------------------------------------------------------------------------------------
# Clauses
# ---------------------------------------------------------------------------------------------

@dataclass
class Clause:
    text: str
    joiner: str  # how it is joined to the previous clause: "", ",", "and", "or", "with", "instead", ...
    negated_by_joiner: bool = False  # after "instead of" / "rather than"


@dataclass
class _Hit:
    kind: str  # "attribute", "shape" or "unsupported"
    target: str  # attribute name, shape component or unsupported label
    value: int  # attribute value, or shape sign (+1 / -1)
    start: int
    end: int
    words: str
    comparative: bool = False
    strength: float | None = None
    negated: bool = False
    inherited: bool = False


def _split_clauses(text: str) -> list[Clause]:
    tokens = TOKEN.findall(text)
    clauses: list[Clause] = []
    current: list[str] = []
    joiner = ""
    index = 0

    def close(next_joiner: str) -> None:
        nonlocal current, joiner
        if current:
            clauses.append(Clause(" ".join(current), joiner, negated_by_joiner=joiner == "instead"))
            current = []
            joiner = next_joiner
        elif next_joiner and (not joiner or joiner == ","):
            joiner = next_joiner  # "..., and glasses": the word says more than the comma

    while index < len(tokens):
        token = tokens[index]
        if token in PUNCTUATION:
            close(",")
            index += 1
            continue
        if token == "without":  # starts a clause and stays in it
            close("with")
            current.append(token)
            index += 1
            continue
        for words, name in SPLIT_PHRASES:
            if tuple(tokens[index : index + len(words)]) == words:
                close(name)
                index += len(words)
                break
        else:
            current.append(token)
            index += 1
    close("")
    return _share_region_forward(clauses)


def _share_region_forward(clauses: list[Clause]) -> list[Clause]:
    """"bigger and wider eyes": a clause of size words alone takes the region of the next clause,
    which takes its intensity word in return ("slightly bigger and wider eyes")."""
    size_words = GROW_WORDS | SHRINK_WORDS | BUSHY_WORDS | THIN_BROW_WORDS | NARROW_EYE_WORDS
    for clause, following in zip(clauses, clauses[1:]):
        intensity_words = [m.group(0) for pattern in (LOW_INTENSITY, HIGH_INTENSITY)
                           for m in pattern.finditer(clause.text)]
        words = [w for w in INTENSITY_SPLIT.sub(" ", clause.text).split() if w not in FILLER_WORDS]
        region = next((w for w in following.text.split() if w in COMPONENT_WORDS), None)
        if following.joiner in ELLIPSIS_JOINERS and region and words and all(w in size_words for w in words):
            clause.text = f"{clause.text} {region}"
            if intensity_words and _intensity(following.text) is None:
                following.text = f"{' '.join(intensity_words)} {following.text}"
    return clauses


def _span_overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < other_end and other_start < end for other_start, other_end in spans)


def _find_hits(clause: str, hair_topic: bool) -> list[_Hit]:
    """Every lexicon cue in one clause, earliest first; overlapping weaker cues are dropped."""
    hits: list[_Hit] = []
    taken: list[tuple[int, int]] = []

    def add(hit: _Hit) -> None:
        if not _span_overlaps(hit.start, hit.end, taken):
            hits.append(hit)
            taken.append((hit.start, hit.end))

    # Unsupported requests first: "red eyes" is about eyes, "bald" is not a hair colour.
    for cue in UNSUPPORTED_CUES:
        for match in cue.pattern.finditer(clause):
            add(_Hit("unsupported", cue.unsupported, 1, match.start(), match.end(), match.group(0)))
    for hit in _age_hits(clause):
        add(hit)
    for hit in _hair_color_hits(clause, hair_topic):
        add(hit)
    for hit in _region_hits(clause):
        add(hit)
    for cue in ATTRIBUTE_CUES:
        for match in cue.pattern.finditer(clause):
            add(_Hit("attribute", cue.attribute, cue.value, match.start(), match.end(), match.group(0),
                     comparative=cue.comparative, strength=cue.strength))
    # "shave off his mustache": "shave" names the removal, not a second request.
    facial_hair = {"Mustache", "Goatee"} | ({"No_Beard"} if any(
        h.target == "No_Beard" and h.value == 0 for h in hits) else set())
    if any(h.target in facial_hair for h in hits):
        hits = [h for h in hits if not (h.target == "No_Beard" and h.value == 1 and h.words.startswith("shav"))]
    return sorted(hits, key=lambda h: h.start)


# A stated age: "70 years old", "make her look 18", "in his twenties" is a cue word instead.
AGE_PATTERNS = (
    re.compile(r"\b(\d{1,3})\s*(?:years?|yrs?)[- ]old\b"),
    re.compile(r"\b(?:look|looks|looking|be|is|aged|age|about|around|like|as)\s+"
               r"(?:about |around |like |roughly |maybe )?(\d{1,3})\b(?!\s*(?:years?|yrs?)\s+(?:younger|older))"),
    re.compile(r"\bin (?:his|her|their) (\d)0s\b"),
)
YOUNG_UP_TO, OLD_FROM = 30, 40  # ages in between are not read as a request


def _age_hits(clause: str) -> list[_Hit]:
    hits = []
    for pattern in AGE_PATTERNS:
        for match in pattern.finditer(clause):
            age = int(match.group(1)) * (10 if pattern is AGE_PATTERNS[2] else 1)
            if age <= YOUNG_UP_TO or age >= OLD_FROM:
                hits.append(_Hit("attribute", "Young", int(age <= YOUNG_UP_TO), match.start(), match.end(),
                                 match.group(0)))
    return hits


def _hair_color_hits(clause: str, hair_topic: bool) -> list[_Hit]:
    words = [(m.group(0), m.start(), m.end()) for m in re.finditer(r"[a-z]+(?:-[a-z]+)*", clause)]
    color_topic = hair_topic and (HAIR_TOPIC.search(clause) or not NOT_HAIR_TOPIC.search(clause))
    found = []
    for word, start, end in words:
        if word in HAIR_ONLY_COLORS:
            found.append((word, start, end, HAIR_ONLY_COLORS[word]))
        elif color_topic and word in COMMON_COLORS:
            found.append((word, start, end, COMMON_COLORS[word]))
        elif color_topic and word in OTHER_HAIR_COLORS:
            found.append((word, start, end, ""))
    if len(found) > 1:
        found = [f for f in found if f[0] not in SHADE_MODIFIERS] or found[:1]
    hits = []
    for word, start, end, attribute in found:
        if attribute:
            hits.append(_Hit("attribute", attribute, 1, start, end, word, comparative=word in COMPARATIVE_COLORS))
        else:
            hits.append(_Hit("unsupported", "other hair colours (only black, blond, brown, gray)", 1,
                             start, end, word))
    return hits


def _region_hits(clause: str) -> list[_Hit]:
    """Region + size word -> shape change; eyebrows + bushy/thin and eyes + narrow -> attributes."""
    words = [(m.group(0), m.start(), m.end()) for m in re.finditer(r"[a-z]+(?:-[a-z]+)*", clause)]
    components = [(COMPONENT_WORDS[w], s, e, w) for w, s, e in words if w in COMPONENT_WORDS]
    if not components:
        return []
    # Words of an intensity phrase say how much, not which way ("a tiny bit bigger" grows).
    intensity_spans = [(m.start(), m.end()) for m in LOW_INTENSITY.finditer(clause)]
    words = [(w, s, e) for w, s, e in words if not _span_overlaps(s, e, intensity_spans)]
    hits = []
    for component, start, end, word in components:
        def nearest(candidates: set[str]):
            found = [(abs(s - start), w, s, e) for w, s, e in words if w in candidates]
            return min(found) if found else None

        if component == "eyebrows":
            bushy, thin = nearest(BUSHY_WORDS), nearest(THIN_BROW_WORDS)
            if bushy or thin:
                _, trait, s, e = min(x for x in (bushy, thin) if x)
                value = 1 if trait in BUSHY_WORDS else 0
                hits.append(_Hit("attribute", "Bushy_Eyebrows", value, min(s, start), max(e, end),
                                 clause[min(s, start) : max(e, end)], comparative=trait in COMPARATIVE_TRAIT_WORDS))
                continue
        if component == "mouth" and MOUTH_OPENING.search(clause):
            continue  # "mouth wide open" is Mouth_Slightly_Open, found by its cue
        if component == "eyes" and EYES_OPENING.search(clause):
            hits.append(_Hit("attribute", "Narrow_Eyes", 0, start, end, word))
            continue
        if component == "eyes":
            narrow = nearest(NARROW_EYE_WORDS)
            if narrow:
                _, trait, s, e = narrow
                hits.append(_Hit("attribute", "Narrow_Eyes", 1, min(s, start), max(e, end),
                                 clause[min(s, start) : max(e, end)], comparative=trait in COMPARATIVE_TRAIT_WORDS))
                continue
        candidates = GROW_WORDS | SHRINK_WORDS
        if component != "hairline" and component != "eyebrows":
            candidates = candidates - VERTICAL_WORDS
        size = nearest(candidates)
        phrase_sign = 1 if GROW_PHRASES.search(clause) else -1 if SHRINK_PHRASES.search(clause) else 0
        if size:
            _, size_word, s, e = size
            sign = 1 if size_word in GROW_WORDS else -1
            # A bigger forehead is a higher hairline; height words keep their sense.
            if word == "forehead" and size_word not in VERTICAL_WORDS:
                sign = -sign
            hits.append(_Hit("shape", component, sign, min(s, start), max(e, end),
                             clause[min(s, start) : max(e, end)], comparative=size_word in COMPARATIVE_SIZE))
        elif component == "hairline" and phrase_sign:
            hits.append(_Hit("shape", component, phrase_sign, start, end, word))
    return hits


def _negation_marks(clause: str) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    prefix = [(m.start(), m.end(), m.group(0)) for m in PREFIX_NEGATORS.finditer(clause)]
    prefix_spans = [(s, e) for s, e, _ in prefix]
    postfix = [(m.start(), m.end()) for m in POSTFIX_NEGATORS.finditer(clause)
               if not _span_overlaps(m.start(), m.end(), prefix_spans)]
    return prefix, postfix


def _intensity(clause: str) -> float | None:
    """LOW or HIGH from the last intensity word in the clause, None when there is none.

    The longer of two overlapping matches wins ("a tiny bit" is low, not "tiny"), and negation words
    are not intensity ("too much makeup" asks for less makeup).
    """
    negation = [(m.start(), m.end()) for m in PREFIX_NEGATORS.finditer(clause)]
    marks = [(m.start(), m.end(), LOW) for m in LOW_INTENSITY.finditer(clause)]
    marks += [(m.start(), m.end(), HIGH) for m in HIGH_INTENSITY.finditer(clause)]
    marks = [
        (start, end, level) for start, end, level in marks
        if not _span_overlaps(start, end, negation)
        and not any(s <= start and end <= e and e - s > end - start for s, e, _ in marks)
    ]
    return max(marks)[2] if marks else None


def _content_words(clause: str, hits: list[_Hit]) -> list[str]:
    """Words that are neither cues, negation, intensity nor function words."""
    spans = [(h.start, h.end) for h in hits]
    spans += [(m.start(), m.end()) for pattern in (PREFIX_NEGATORS, POSTFIX_NEGATORS, LOW_INTENSITY,
                                                    HIGH_INTENSITY) for m in pattern.finditer(clause)]
    return [m.group(0) for m in re.finditer(r"[a-z0-9]+(?:['\-][a-z0-9]+)*", clause)
            if not _span_overlaps(m.start(), m.end(), spans) and m.group(0) not in FILLER_WORDS]


# Pronouns and framing verbs pull every sentence towards the gender descriptions ("make HIM look
# feminine" scored as a man); the embedding sees the clause without them.
EMBEDDING_FRAMING = re.compile(_words(
    "he", "him", "his", "she", "her", "hers", "they", "them", "their", "it", "its", "make", "makes",
    "turn", "give", "put", "let", "want", "would like", "should", "could you", "can you", "please",
    r"look(?:s|ing)?(?: like)?",
))


def _embedding_text(clause: str) -> str:
    """The clause as the embedding sees it: no negation, intensity, pronouns or framing verbs."""
    stripped = clause
    for pattern in (PREFIX_NEGATORS, POSTFIX_NEGATORS, LOW_INTENSITY, HIGH_INTENSITY, EMBEDDING_FRAMING):
        stripped = pattern.sub(" ", stripped)
    return " ".join(stripped.split()) or clause


# ---------------------------------------------------------------------------------------------
# Embedding matcher
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pole:
    kind: str  # "attribute", "shape" or "unsupported"
    target: str
    value: int  # attribute value, or shape sign


class _DescriptionBank:
    """Embeddings of every description of every supported (and unsupported) edit."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.poles: list[_Pole] = []
        texts: list[str] = []
        owner: list[int] = []
        for entry in SUPPORTED:
            kind, target = ("shape", entry.name[6:]) if entry.name.startswith("shape:") else ("attribute", entry.name)
            for value, descriptions in ((1, entry.set_descriptions), (0, entry.cleared_descriptions)):
                if not descriptions:
                    continue
                self.poles.append(_Pole(kind, target, value if kind == "attribute" else (1 if value else -1)))
                texts += descriptions
                owner += [len(self.poles) - 1] * len(descriptions)
        for label, descriptions in UNSUPPORTED.items():
            self.poles.append(_Pole("unsupported", label, 1))
            texts += descriptions
            owner += [len(self.poles) - 1] * len(descriptions)
        self.embeddings = encoder.encode(texts)
        self.owner = torch.tensor(owner)

    def pole_scores(self, clauses: list[str]):
        """(n_clauses, n_poles): the best cosine similarity to any description of each pole."""
        similarity = self.encoder.encode(clauses, max_length=MAX_CLAUSE_TOKENS) @ self.embeddings.T
        scores = torch.full((len(clauses), len(self.poles)), -1.0)
        return scores.scatter_reduce(1, self.owner.expand(len(clauses), -1), similarity, reduce="amax")


_BANKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _bank_for(encoder) -> _DescriptionBank:
    bank = _BANKS.get(encoder)
    if bank is None:
        bank = _BANKS[encoder] = _DescriptionBank(encoder)
    return bank


@dataclass
class _EmbeddingMatch:
    pole: _Pole
    similarity: float
    margin: float  # over the best pole of any other target
    confidence: float


def _embedding_matches(bank: _DescriptionBank, clauses: list[str]) -> list[_EmbeddingMatch]:
    scores = bank.pole_scores(clauses)
    matches = []
    for row in scores:
        best = int(row.argmax())
        pole = bank.poles[best]
        others = [float(row[i]) for i, p in enumerate(bank.poles) if (p.kind, p.target) != (pole.kind, pole.target)]
        similarity = float(row[best])
        margin = similarity - max(others)
        # Near 1 when clearly similar and clearly ahead, 0 at the acceptance limits.
        confidence = min(1.0, max(0.0, (similarity - 0.35) / 0.4)) * min(1.0, max(0.0, margin / 0.15))
        matches.append(_EmbeddingMatch(pole, similarity, margin, round(confidence, 3)))
    return matches


# ---------------------------------------------------------------------------------------------
# interpret
# ---------------------------------------------------------------------------------------------

def interpret(text: str, *, encoder=None, use_embeddings: bool = True) -> StructuredEdit:
    """Read a free-text edit request; nothing is run. See the module docstring for the rules.

    ``encoder``: a ``faceedit_text.minilm.MiniLMEncoder`` (default: the shared one, loaded on first
    use). ``use_embeddings=False`` reads keywords only (no model needed; paraphrases go to unknown).
    Raises ``ValueError`` for an empty text and ``MiniLMUnavailable`` when the model is needed but not
    installed.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("empty text: describe the edit, e.g. 'make her hair blond and add a smile'")
    notes = []
    if len(text) > MAX_TEXT_CHARS:
        notes.append(f"Only the first {MAX_TEXT_CHARS} characters were read.")
        text = text[:MAX_TEXT_CHARS]
    clauses = _split_clauses(_normalise(text))
    if len(clauses) > MAX_CLAUSES:
        notes.append(f"Only the first {MAX_CLAUSES} requests were read.")
        clauses = clauses[:MAX_CLAUSES]
    if use_embeddings and encoder is None:
        from .minilm import shared_encoder

        encoder = shared_encoder()

    attributes: list[AttributeChange] = []
    shapes: list[ShapeChange] = []
    unknown: list[str] = []
    unsupported_labels: list[tuple[str, str]] = []
    to_embed: list[Clause] = []  # clauses with content but no cue
    leftovers: list[tuple[Clause, str, set[str]]] = []  # words a cue clause left unread, and its targets
    previous_prefix_negated = False
    previous_sign = 0
    previous_intensity = None

    for index, clause in enumerate(clauses):
        hair_topic = any(HAIR_TOPIC.search(clauses[i].text) or _has_hair_color_word(clauses[i].text)
                         for i in (index - 1, index, index + 1) if 0 <= i < len(clauses))
        hits = _find_hits(clause.text, hair_topic)
        prefix, postfix = _negation_marks(clause.text)
        intensity = _intensity(clause.text)
        elliptical = (
            clause.joiner in ELLIPSIS_JOINERS and index > 0 and not prefix and not postfix
            and intensity is None and not ACTION_WORDS.search(clause.text)
            and not any(word in DEGREE_WORDS for word in clause.text.split())
        )
        borrows_size = elliptical and previous_sign and not any(h.kind == "shape" for h in hits)
        if borrows_size or (elliptical and previous_prefix_negated):
            intensity = previous_intensity  # "much bigger eyes and nose": the nose borrows "much" too
        clause_prefix_negated = False
        for hit in hits:
            negators = [word for s, e, word in prefix if e <= hit.start]
            flips = len(negators) + sum(1 for s, e in postfix if s >= hit.end)
            if elliptical and previous_prefix_negated and hit.kind == "attribute":
                flips += 1
                hit.inherited = True
            if clause.negated_by_joiner:
                flips += 1
            hit.negated = flips % 2 == 1
            if negators and all(word in WEAK_NEGATORS for word in negators):
                hit.comparative = True
            clause_prefix_negated |= bool(negators) or (elliptical and previous_prefix_negated)
        if borrows_size:
            hits += _borrowed_size(clause.text, previous_sign)
        content = _content_words(clause.text, hits)
        supported_hits = [h for h in hits if h.kind != "unsupported"]
        if len(supported_hits) == 1 and supported_hits[0].kind == "attribute" and any(
                word in COMPARATIVE_WORDS for word in PREFIX_NEGATORS.sub(" ", clause.text).split()):
            supported_hits[0].comparative = True  # "make the smile bigger", "a thicker beard"
        unsupported_hits = [h for h in hits if h.kind == "unsupported"]
        if unsupported_hits and not supported_hits:  # the whole clause, named after its first cue
            unsupported_hits = unsupported_hits[:1]
        for hit in unsupported_hits:
            phrase = hit.words if supported_hits else clause.text
            unknown.append(phrase)
            unsupported_labels.append((phrase, hit.target))
        confidence = LEXICON_CONFIDENCE if not content else PARTLY_READ_CONFIDENCE
        for hit in supported_hits:
            strength = _strength(hit, intensity, clause.text)
            if hit.inherited:
                confidence = min(confidence, BORROWED_CONFIDENCE)
            if hit.kind == "attribute":
                value = 1 - hit.value if hit.negated else hit.value
                attributes.append(AttributeChange(hit.target, value, strength, confidence, clause.text))
            else:
                sign = -hit.value if hit.negated else hit.value
                shapes.append(ShapeChange(hit.target, sign * strength, confidence, clause.text))
        if not hits and content:
            to_embed.append(clause)
        elif hits and content:
            leftovers.append((clause, " ".join(content), {h.target for h in hits}))
        previous_prefix_negated = clause_prefix_negated
        previous_sign = next((h.value for h in hits if h.kind == "shape"), 0)
        previous_intensity = intensity

    if to_embed and encoder is None:
        unknown += [clause.text for clause in to_embed]
    elif (to_embed or leftovers) and encoder is not None:
        _resolve_by_embedding(encoder, to_embed, attributes, shapes, unknown, unsupported_labels)
        _read_leftovers(encoder, leftovers, attributes, shapes)

    attributes, shapes, conflicts = _merge_and_find_conflicts(attributes, shapes)
    message = _message(attributes, shapes, unknown, unsupported_labels, conflicts, notes)
    return StructuredEdit(attributes, shapes, list(dict.fromkeys(unknown)), message)


def _has_hair_color_word(clause: str) -> bool:
    return any(word in HAIR_ONLY_COLORS for word in re.findall(r"[a-z]+(?:-[a-z]+)*", clause))


def _borrowed_size(clause: str, sign: int) -> list[_Hit]:
    """"bigger eyes and nose": the bare "nose" borrows the size word of the clause before."""
    for word, component in COMPONENT_WORDS.items():
        match = re.search(rf"\b{word}\b", clause)
        if match:
            return [_Hit("shape", component, sign, match.start(), match.end(), word, comparative=True,
                         inherited=True)]
    return []


def _strength(hit: _Hit, intensity: float | None, clause: str) -> float:
    if intensity is not None:
        return intensity
    if hit.strength is not None:
        return hit.strength
    if hit.kind == "shape":
        return MEDIUM
    degree_words = re.search(r"\bmore\b", PREFIX_NEGATORS.sub(" ", clause))  # "less" is a weak negator
    return MEDIUM if hit.comparative or degree_words else HIGH


def _resolve_by_embedding(encoder, to_embed, attributes, shapes, unknown, unsupported_labels) -> None:
    if not to_embed:
        return
    bank = _bank_for(encoder)
    stripped = [_embedding_text(clause.text) for clause in to_embed]
    for clause, match in zip(to_embed, _embedding_matches(bank, stripped)):
        pole = match.pole
        if pole.kind == "unsupported":
            unknown.append(clause.text)
            if match.similarity >= UNSUPPORTED_SIMILARITY:
                unsupported_labels.append((clause.text, pole.target))
            continue
        if (match.similarity < ACCEPT_SIMILARITY or match.margin < ACCEPT_MARGIN
                or match.confidence < MIN_EMBEDDING_CONFIDENCE):
            unknown.append(clause.text)
            continue
        prefix, postfix = _negation_marks(clause.text)
        negated = (len(prefix) + len(postfix) + clause.negated_by_joiner) % 2 == 1
        weak = bool(prefix) and all(word in WEAK_NEGATORS for _, _, word in prefix)
        intensity = _intensity(clause.text)
        comparative = weak or any(word in COMPARATIVE_HINTS for word in clause.text.split())
        hit = _Hit(pole.kind, pole.target, pole.value, 0, len(clause.text), clause.text, comparative=comparative)
        strength = _strength(hit, intensity, clause.text)
        if pole.kind == "attribute":
            value = 1 - pole.value if negated else pole.value
            attributes.append(AttributeChange(pole.target, value, strength, match.confidence, clause.text,
                                              source="embedding"))
        else:
            sign = -pole.value if negated else pole.value
            shapes.append(ShapeChange(pole.target, sign * strength, match.confidence, clause.text,
                                      source="embedding"))


def _read_leftovers(encoder, leftovers, attributes, shapes) -> None:
    """"a grinning young man": words beside the cues may name one more edit the lexicon lacks.

    Only a clear match is taken (nothing goes to ``unknown`` from here: the cues were understood).
    """
    if not leftovers:
        return
    matches = _embedding_matches(_bank_for(encoder), [words for _, words, _ in leftovers])
    for (clause, words, targets), match in zip(leftovers, matches):
        pole = match.pole
        if (pole.kind == "unsupported" or pole.target in targets or match.similarity < LEFTOVER_SIMILARITY
                or match.margin < ACCEPT_MARGIN or match.confidence < MIN_EMBEDDING_CONFIDENCE):
            continue
        prefix, postfix = _negation_marks(clause.text)
        negated = (len(prefix) + len(postfix) + clause.negated_by_joiner) % 2 == 1
        hit = _Hit(pole.kind, pole.target, pole.value, 0, len(clause.text), words,
                   comparative=any(word in COMPARATIVE_WORDS for word in words.split()))
        strength = _strength(hit, _intensity(clause.text), clause.text)
        if pole.kind == "attribute":
            attributes.append(AttributeChange(pole.target, 1 - pole.value if negated else pole.value, strength,
                                              match.confidence, clause.text, source="embedding"))
        else:
            shapes.append(ShapeChange(pole.target, (-pole.value if negated else pole.value) * strength,
                                      match.confidence, clause.text, source="embedding"))


def _merge_and_find_conflicts(attributes, shapes):
    """Merge repeats of one request; drop (and report) requests that contradict each other."""
    conflicts: list[str] = []
    merged: dict[tuple[str, float], AttributeChange] = {}
    for change in attributes:
        key = (change.attribute, change.value)
        if key in merged:
            kept = merged[key]
            kept.strength = max(kept.strength, change.strength)
            kept.confidence = max(kept.confidence, change.confidence)
            if change.phrase not in kept.phrase:
                kept.phrase += f" / {change.phrase}"
        else:
            merged[key] = change
    attributes = list(merged.values())
    dropped: set[int] = set()
    by_attribute: dict[str, list[int]] = {}
    for i, change in enumerate(attributes):
        by_attribute.setdefault(change.attribute, []).append(i)
    for name, indices in by_attribute.items():
        if len(indices) > 1:  # both values of one attribute
            conflicts.append(
                f"'{attributes[indices[0]].phrase}' and '{attributes[indices[1]].phrase}' ask for opposite "
                f"{_SUPPORTED_BY_NAME[name].group} changes"
            )
            dropped.update(indices)
    colours = [i for i, c in enumerate(attributes) if c.attribute in HAIR_COLOR_ATTRIBUTES and c.value == 1]
    if len(colours) > 1:
        named = " and ".join(f"'{attributes[i].phrase}'" for i in colours)
        conflicts.append(f"{named} each set a different hair colour; pick one")
        dropped.update(colours)
    attributes = [c for i, c in enumerate(attributes) if i not in dropped]

    merged_shapes: dict[str, list[ShapeChange]] = {}
    for change in shapes:
        merged_shapes.setdefault(change.component, []).append(change)
    kept_shapes = []
    for component, changes in merged_shapes.items():
        if len({change.amount > 0 for change in changes}) > 1:
            conflicts.append(f"'{changes[0].phrase}' and '{changes[-1].phrase}' change the {component} "
                             f"in opposite directions")
            continue
        strongest = max(changes, key=lambda c: abs(c.amount))
        strongest.confidence = max(c.confidence for c in changes)
        kept_shapes.append(strongest)
    return attributes, kept_shapes, conflicts


def _message(attributes, shapes, unknown, unsupported_labels, conflicts, notes) -> str:
    parts = []
    if conflicts:
        parts.append("Contradicting requests, left out: " + "; ".join(conflicts) + ".")
    labels = dict(unsupported_labels)
    if unknown:
        described = []
        for phrase in dict.fromkeys(unknown):
            label = labels.get(phrase)
            shown = phrase if len(phrase) <= 80 else phrase[:77] + "..."
            described.append(f"'{shown}' ({label} is not supported)" if label else f"'{shown}'")
        parts.append("I can't do " + ", ".join(described) + ". " + supported_summary())
    if not attributes and not shapes and not unknown and not conflicts:
        parts.append("I found no edit in this text. " + supported_summary())
    parts += notes
    return " ".join(parts)
