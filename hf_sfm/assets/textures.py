"""An offline *instance* dataset with natural-image statistics: crops of real photographs shipped in PyPI wheels.

MNIST digits are the only real images the demo had, and the library's defaults were tuned on them. Validating
those defaults needs a dataset nobody tuned on, with natural-image statistics (colour, texture, clutter) rather
than pen strokes, and it must build here without the Hub or any download at run time. The `scikit-image` wheel
bundles about twenty real photographs in `skimage/data/` (the images it fetches with `pooch` are *not* in the
wheel and are not used), and the `scikit-learn` wheel bundles two more (`china.jpg`, `flower.jpg`). Each class
of this dataset is one photographed subject (a texture, a material, an object or a scene), and every image is a
random crop of it: random position, scale (an eighth to three fifths of the photo's short side), rotation
(±45°) and flip, then colour jitter (grayscale, tint, hue, saturation, brightness, contrast), blur and pixel
noise, all drawn from a seeded `numpy.random.Generator`. The jitter is the same law for every class, so no single
pixel statistic (mean colour, grayscale or not) names the class; the crops are `64 × 64` RGB unless asked
otherwise. The jitter strengths below were set once so that a linear probe on ImageNet EfficientNet-Lite features
at 64 px is far from saturated with one image per class (on the validation split) and then frozen.

The task is recognising *which photograph* a crop comes from (an instance task, not a category task: for that,
see `emoji_categories`). So that test measures that on content the training split never showed, each photo (or
its `region`) is cut into a `GRID × GRID` grid of tiles, and each class's tiles are dealt to train, validation and
test (`SPLIT_TILES`, shuffled by `(seed, class)`): the three splits' crops come from disjoint regions of each
photograph. Crop sizes are fractions of a tile's short side, the same law in every split.

The files are read with PIL from where the wheels installed them: `scikit-image` itself is never imported.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import PIL.ImageFilter

INSTALL_HINT = 'pip install "hf_sfm[demo]"'
IMAGE_SIDE = 64

# Each photo (or region) is cut into GRID × GRID tiles; per photo, this many tiles go to validation and test
# (train keeps the rest). Crop geometry: fractions of the short side of a tile, sampled log-uniformly.
GRID = 3
SPLIT_TILES = {"validation": 2, "test": 2}
SPLITS = ("train", "validation", "test")
CROP_FRACTION = (0.4, 1.0)
MAX_ROTATION_DEGREES = 45.0
# Colour jitter, applied in this order to every crop (the same law for every class).
GRAYSCALE_PROBABILITY = 0.3
TINT_RANGE = (0.75, 1.25)  # independent gain per RGB channel
HUE_DEGREES = 45.0  # rotation of the chroma plane (YIQ), ± this many degrees
SATURATION_RANGE = (0.5, 1.5)
BRIGHTNESS_SHIFT = 0.15  # added, ± this much, on a [0, 1] scale
CONTRAST_RANGE = (0.6, 1.4)
BLUR_SIGMA_RANGE = (0.0, 1.2)  # PIL Gaussian blur radius at the output resolution
NOISE_STD_RANGE = (0.0, 0.05)


@dataclass(frozen=True)
class TextureSource:
    """One class: the photographs its crops are cut from.

    Args:
        name: the class name.
        package: the wheel that ships the files (`skimage` or `sklearn`).
        files: paths inside that package.
        region: optional `(left, top, right, bottom)` box, in pixels of every file, crops stay inside (e.g. the
            disc of the retina photo, leaving out its black surround).
    """

    name: str
    package: str
    files: tuple[str, ...]
    region: tuple[int, int, int, int] | None = None


SOURCES = (
    TextureSource("brick", "skimage", ("data/brick.png",)),
    TextureSource("grass", "skimage", ("data/grass.png",)),
    TextureSource("gravel", "skimage", ("data/gravel.png",)),
    TextureSource("coins", "skimage", ("data/coins.png",)),
    TextureSource("moon", "skimage", ("data/moon.png",)),
    TextureSource("text", "skimage", ("data/page.png", "data/text.png")),
    TextureSource("cat", "skimage", ("data/chelsea.png",)),
    TextureSource("coffee", "skimage", ("data/coffee.png",)),
    TextureSource("astronaut", "skimage", ("data/astronaut.png",)),
    TextureSource("galaxies", "skimage", ("data/hubble_deep_field.jpg",)),
    TextureSource("tissue", "skimage", ("data/ihc.png",)),
    TextureSource("motorcycle", "skimage", ("data/motorcycle_left.png", "data/motorcycle_right.png")),
    TextureSource("retina", "skimage", ("data/retina.jpg",), region=(260, 260, 1150, 1150)),
    TextureSource("rocket", "skimage", ("data/rocket.jpg",)),
    TextureSource("temple", "sklearn", ("datasets/images/china.jpg",)),
    TextureSource("flower", "sklearn", ("datasets/images/flower.jpg",)),
)
CLASS_NAMES = [source.name for source in SOURCES]

# Default sizes: 16 classes × (120 train + 40 validation + 40 test) = 3200 crops.
TRAIN_PER_CLASS = 120
VALIDATION_PER_CLASS = 40
TEST_PER_CLASS = 40


def _package_folder(package: str) -> Path:
    """Where `package` is installed, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(package, package)
        raise ImportError(
            f"The offline texture photos ship inside the `{wheel}` wheel, which is not installed. Install the demo "
            f"assets with: {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _photo(package: str, file: str) -> PIL.Image.Image:
    """One bundled photograph as an RGB PIL image (decoded once per process; callers must not modify it)."""
    path = _package_folder(package) / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed `{package}` wheel; reinstall it ({INSTALL_HINT}).")
    with PIL.Image.open(path) as image:
        return image.convert("RGB")


def _random_crop(photo: PIL.Image.Image, region: tuple[int, int, int, int], side: int, rng) -> PIL.Image.Image:
    """A `side × side` crop at a random position, scale, rotation and flip, inside `region` of `photo`.

    The rotated square's bounding box is resized (antialiased) to twice the output side first, then rotated and
    center-cropped, then resized to `side`: no aliasing from large crops, no empty corners.
    """
    left, top, right, bottom = region
    short = min(right - left, bottom - top)
    crop = short * math.exp(rng.uniform(math.log(CROP_FRACTION[0]), math.log(CROP_FRACTION[1])))
    angle = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
    radians = math.radians(angle)
    box = crop * (abs(math.cos(radians)) + abs(math.sin(radians)))
    if box > short:  # a large crop at a steep angle: shrink it until its rotated square fits
        crop *= short / box
        box = short
    center_x = rng.uniform(left + box / 2, right - box / 2)
    center_y = rng.uniform(top + box / 2, bottom - box / 2)
    work = 2 * side  # working resolution of the crop
    box_pixels = math.ceil(box * work / crop)
    patch = photo.resize(
        (box_pixels, box_pixels),
        PIL.Image.Resampling.BILINEAR,
        box=(center_x - box / 2, center_y - box / 2, center_x + box / 2, center_y + box / 2),
    )
    patch = patch.rotate(angle, PIL.Image.Resampling.BILINEAR)
    offset = (box_pixels - work) // 2
    patch = patch.crop((offset, offset, offset + work, offset + work)).resize(
        (side, side), PIL.Image.Resampling.BILINEAR
    )
    if rng.random() < 0.5:
        patch = patch.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return patch


# RGB → YIQ (luma + two chroma axes): hue is a rotation of (I, Q), saturation a scaling of it.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _jitter(image: PIL.Image.Image, rng) -> np.ndarray:
    """Colour jitter, blur and noise → `(side, side, 3)` uint8. One law for every class."""
    blur = rng.uniform(*BLUR_SIGMA_RANGE)
    if blur > 0.3:
        image = image.filter(PIL.ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    yiq = pixels @ _RGB_TO_YIQ.T
    if rng.random() < GRAYSCALE_PROBABILITY:
        yiq[..., 1:] = 0.0
    angle = math.radians(rng.uniform(-HUE_DEGREES, HUE_DEGREES))
    saturation = rng.uniform(*SATURATION_RANGE)
    rotation = saturation * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    yiq[..., 1:] = yiq[..., 1:] @ rotation.T
    pixels = (yiq @ _YIQ_TO_RGB.T) * rng.uniform(*TINT_RANGE, size=3)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(*CONTRAST_RANGE) + mean + rng.uniform(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT)
    pixels = pixels + rng.normal(0.0, rng.uniform(*NOISE_STD_RANGE), size=pixels.shape)
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


Tile = tuple[int, tuple[float, float, float, float]]  # (file index, (left, top, right, bottom))


def texture_tiles(seed: int = 0) -> dict[str, dict[str, list[Tile]]]:
    """`{split: {class: [(file index, box), ...]}}`: every photo's grid of tiles, dealt to the splits.

    Per class, the tiles of each photo are shuffled by `(seed, class, file)`; the first go to test, the next to
    validation, the rest to train. The boxes of a class in different splits never overlap.
    """
    dealt: dict[str, dict[str, list[Tile]]] = {split: {} for split in SPLITS}
    for label, source in enumerate(SOURCES):
        for split in SPLITS:
            dealt[split][source.name] = []
        for file_index, file in enumerate(source.files):
            photo = _photo(source.package, file)
            left, top, right, bottom = source.region or (0, 0, photo.width, photo.height)
            width, height = (right - left) / GRID, (bottom - top) / GRID
            tiles = [
                (
                    file_index,
                    (left + column * width, top + row * height, left + (column + 1) * width, top + (row + 1) * height),
                )
                for row in range(GRID)
                for column in range(GRID)
            ]
            order = np.random.default_rng((seed, label, file_index)).permutation(len(tiles))
            tiles = [tiles[index] for index in order]
            test, validation = SPLIT_TILES["test"], SPLIT_TILES["validation"]
            dealt["test"][source.name] += tiles[:test]
            dealt["validation"][source.name] += tiles[test : test + validation]
            dealt["train"][source.name] += tiles[test + validation :]
    return dealt


@functools.cache
def _texture_arrays(split: str, per_class: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(C · per_class, S, S, 3)` uint8 crops of one split and `(C · per_class,)` labels, class-major; read-only,
    kept for the process (building takes seconds).

    Each class and split draws from its own generator, seeded by `(seed, class index, split index)`, so a class's
    first `n` crops are the same whatever `per_class` is and whichever classes come before it.
    """
    tiles = texture_tiles(seed)[split]
    crops, labels = [], []
    for label, source in enumerate(SOURCES):
        rng = np.random.default_rng((seed, label, SPLITS.index(split)))
        photos = [_photo(source.package, file) for file in source.files]
        class_tiles = tiles[source.name]
        for _ in range(per_class):
            file_index, box = class_tiles[rng.integers(len(class_tiles))]
            crops.append(_jitter(_random_crop(photos[file_index], box, image_size, rng), rng))
            labels.append(label)
    pixels, labels = np.stack(crops), np.asarray(labels, dtype=np.int64)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def texture_features() -> datasets.Features:
    """The schema of `load_texture_instances`: `image` (`datasets.Image`) and `label` (`ClassLabel` by subject)."""
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})


def load_texture_instances(
    train_per_class: int = TRAIN_PER_CLASS,
    validation_per_class: int = VALIDATION_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    image_size: int = IMAGE_SIDE,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Crops of 16 photographed subjects as a `DatasetDict`; `train`/`validation`/`test` from disjoint regions.

    An instance task: the class is the photograph (brick, grass, gravel, coins, moon, text, cat, coffee, astronaut,
    galaxies, tissue, motorcycle, retina, rocket, temple, flower; `CLASS_NAMES`), and a test crop comes from a
    region of it no training crop touched. Every image is an `image_size × image_size` RGB crop under a random
    position, scale, rotation, flip, colour jitter, blur and noise (see the module docstring). With the defaults:
    1920/640/640 rows (120/40/40 per class).

    Deterministic given `seed` (the tiles, the crops and their jitter all follow it). Tune on `validation`, report
    on `test`. Everything stays in memory: nothing is read from or written to the `datasets` cache.
    """
    counts = {"train": train_per_class, "validation": validation_per_class, "test": test_per_class}
    if any(count < 1 for count in counts.values()) or image_size < 8:
        raise ValueError(
            f"load_texture_instances needs at least one image per class in every split and image_size >= 8, "
            f"got {counts} and image_size={image_size}."
        )
    splits = {}
    for split, count in counts.items():
        pixels, labels = _texture_arrays(split, count, image_size, seed)
        splits[split] = datasets.Dataset.from_dict(
            {"image": [PIL.Image.fromarray(array) for array in pixels], "label": labels.tolist()},
            features=texture_features(),
        )
    return datasets.DatasetDict(splits)
