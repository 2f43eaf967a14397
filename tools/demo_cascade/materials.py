"""Procedural material swatches with captions: the training data of the demo cascade.

Every image is drawn from (pattern family, main colour, optional second colour) with random scale,
orientation, phase and colour jitter. Caption semantics are fixed so a small model can learn them
and a classifier can check them: the first colour a caption names always covers most of the image
(the "main" colour); when a caption names one colour, the second tone is a lighter or darker shade
of it that still reads as the same named colour. Some images are composited onto a shaded object
silhouette over a random background colour (captioned "a vase made of red marble"), the kind of
picture SDS renders show the model.

Hand-written because no library draws captioned material swatches; numpy only, 64 px by default.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# sRGB anchors of the named colours (what the colour classifier compares against).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.60, 0.20),
    "teal": (0.05, 0.55, 0.55),
    "blue": (0.12, 0.25, 0.80),
    "purple": (0.50, 0.18, 0.65),
    "pink": (0.95, 0.50, 0.70),
    "brown": (0.45, 0.27, 0.12),
    "white": (0.93, 0.93, 0.92),
    "grey": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
}
COLOURS = tuple(PALETTE)
PATTERNS = ("solid", "checkerboard", "stripes", "polka dots", "bricks", "wood", "marble", "tiles")
OBJECTS = ("vase", "box", "ball", "cup", "bowl", "pot", "chair", "statue", "shape", "object")

# Held-out (colour, pattern) pairs: never drawn together in training, in any caption form. Each
# colour keeps at least 6 patterns and each pattern at least 9 colours in training.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "bricks"), ("orange", "marble"), ("yellow", "checkerboard"), ("green", "wood"),
    ("teal", "stripes"), ("blue", "polka dots"), ("purple", "tiles"), ("pink", "solid"),
    ("brown", "checkerboard"), ("white", "stripes"), ("grey", "polka dots"), ("black", "marble"),
    ("red", "tiles"), ("orange", "polka dots"), ("yellow", "marble"), ("green", "bricks"),
    ("teal", "wood"), ("blue", "checkerboard"), ("purple", "solid"), ("brown", "stripes"),
)

# Single-colour captions per pattern ({c} = main colour) and two-colour ones ({c} main, {d} second).
_ONE = {
    "solid": ("{c}", "plain {c}", "a solid {c} surface"),
    "checkerboard": ("a {c} checkerboard", "{c} checkerboard pattern"),
    "stripes": ("{c} stripes", "a {c} striped pattern"),
    "polka dots": ("{c} polka dots", "a {c} polka dot pattern"),
    "bricks": ("{c} bricks", "a {c} brick wall"),
    "wood": ("{c} wood", "{c} wood grain"),
    "marble": ("{c} marble", "polished {c} marble"),
    "tiles": ("{c} tiles", "{c} square tiles"),
}
_TWO = {
    "checkerboard": ("a {c} and {d} checkerboard",),
    "stripes": ("{c} and {d} stripes",),
    "polka dots": ("{c} with {d} polka dots",),
    "bricks": ("{c} bricks with {d} mortar",),
    "marble": ("{c} marble with {d} veins",),
    "tiles": ("{c} tiles with {d} grout",),
}
_OBJECT_FORMS = ("a {o} made of {m}", "a {c} {o}")
# Pattern words alone ("a checkerboard", "wood grain"), on swatches of any colour: the pattern
# word must then carry the whole structure by itself, which is what composing it with a colour it
# never appeared next to needs (held-out pairs stay out of the images as well).
_BARE = {p: tuple(f.replace("{c} ", "").replace(" {c}", "") for f in forms if f != "{c}")
         for p, forms in _ONE.items()}


def _dist2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance in a luma-weighted RGB: hue differences count more than shade differences."""
    w = np.array([2.0, 4.0, 3.0], dtype=np.float32)  # "redmean"-like channel weights
    return (((a - b) ** 2) * w).sum(-1)


_ANCHORS = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest named colour, for any [..., 3] array of sRGB values."""
    d = _dist2(rgb[..., None, :], _ANCHORS)
    return d.argmin(-1)


def shade_of(colour: str) -> np.ndarray:
    """The second tone of a single-colour caption: the darker or lighter version of `colour` with the
    largest luminance difference that still reads as `colour`, backed off a little from the edge.

    Why the largest: the first cascade trained with mild shades (5-15 % luminance difference)
    learned the colours but hardly any patterns, which cost it almost nothing in the loss.
    """
    return np.array(_shade(colour), dtype=np.float32)


@functools.lru_cache(maxsize=None)
def _shade(colour: str) -> tuple[float, float, float]:
    base = np.array(PALETTE[colour], dtype=np.float32)
    luma = np.array([0.3, 0.59, 0.11], dtype=np.float32)
    best, best_diff = base, 0.0
    for k in np.linspace(0.3, 0.95, 27):
        for candidate in (base * k, base + (1.0 - base) * (1.0 - k)):
            diff = abs(float((candidate - base) @ luma))
            if diff > best_diff and COLOURS[int(nearest_colour(candidate))] == colour:
                best, best_diff = candidate, diff
    safe = base + 0.85 * (best - base)  # margin: jitter and noise must not push texels over the edge
    return tuple(float(v) for v in np.clip(safe, 0.0, 1.0))


@dataclass(frozen=True)
class Material:
    """What an image shows: pattern family, main colour, second colour (None = a shade of the main)."""

    pattern: str
    colour: str
    second: str | None = None
    on_object: str | None = None  # composited onto this object's silhouette

    def caption(self, rng: np.random.Generator, *, bare: bool = False) -> str:
        """The caption; `bare` names the pattern family without colours ("a checkerboard"), for
        single-colour swatches that are not on an object."""
        if bare and self.second is None and self.on_object is None:
            return str(rng.choice(_BARE[self.pattern]))
        if self.second is not None:
            text = str(rng.choice(_TWO[self.pattern])).format(c=self.colour, d=self.second)
        else:
            text = str(rng.choice(_ONE[self.pattern])).format(c=self.colour)
        if self.on_object is None:
            return text
        if self.second is None and self.pattern == "solid":
            return f"a {self.colour} {self.on_object}"
        return f"a {self.on_object} made of {text}"


def vocabulary_words() -> list[str]:
    """Every word any caption can contain (the tokenizer's vocabulary, besides special tokens)."""
    words: list[str] = []
    forms = [f for group in (_ONE, _TWO) for fs in group.values() for f in fs] + list(_OBJECT_FORMS)
    for form in forms:
        for word in form.replace("{c}", "").replace("{d}", "").replace("{o}", "").replace("{m}", "").split():
            words.append(word)
    words += list(COLOURS) + list(OBJECTS) + [w for p in PATTERNS for w in p.split()]
    return list(dict.fromkeys(words))


def allowed(colour: str, pattern: str) -> bool:
    return (colour, pattern) not in HELD_OUT


def random_material(rng: np.random.Generator, *, object_prob: float = 0.2, two_colour_prob: float = 0.5,
                    train: bool = True) -> Material:
    """A random training material; with train=True held-out colour/pattern pairs never appear."""
    while True:
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        if not train or allowed(colour, pattern):
            break
    second = None
    if pattern in _TWO and rng.random() < two_colour_prob:
        second = COLOURS[int(rng.integers(len(COLOURS)))]
        if second == colour:
            second = None
    on_object = OBJECTS[int(rng.integers(len(OBJECTS)))] if rng.random() < object_prob else None
    return Material(pattern, colour, second, on_object)


# ---- pattern masks: float [H, W] in [0, 1], 1 = second tone; second tone covers < 50 % --------

# Orientations a pattern family is drawn in: "none", multiples of 90 or 45 degrees, or any angle.
# Kept narrow on purpose: with free rotations for every family the second cascade (5500 steps)
# drew recognizable patterns but mixed the families up (held-out pattern accuracy 30 %).
_ANGLE_STEPS = {"quarter": np.pi / 2, "eighth": np.pi / 4}


def _grid(size: int, rng: np.random.Generator, rotate: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1), rotated about the centre as `rotate` allows (see above)."""
    ax = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(ax, ax, indexing="ij")
    if rotate != "none":
        angle = rng.uniform(0, np.pi) if rotate == "free" else rng.integers(4) * _ANGLE_STEPS[rotate]
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * (u - 0.5) - s * (v - 0.5) + 0.5, s * (u - 0.5) + c * (v - 0.5) + 0.5
    return u.astype(np.float32), v.astype(np.float32)


def _value_noise(size: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random lattice upsampled bicubically-ish (cosine interpolation)."""
    lattice = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, endpoint=False, dtype=np.float32) + 0.5 * cells / size
    i = np.floor(t).astype(int).clip(0, cells - 1)
    f = (1 - np.cos((t - i) * np.pi)) * 0.5
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _fbm(size: int, rng: np.random.Generator, base: int = 3, octaves: int = 4) -> np.ndarray:
    total = np.zeros((size, size), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * _value_noise(size, rng, base * 2 ** o)
        norm += amp
        amp *= 0.5
    return total / norm


def _checker(size, rng):
    u, v = _grid(size, rng, rotate="quarter")
    n = rng.uniform(2.5, 5)
    return ((np.floor(u * n) + np.floor(v * n)) % 2).astype(np.float32)


def _stripes(size, rng):
    u, _ = _grid(size, rng, rotate="eighth")
    n = rng.uniform(2.5, 5)
    duty = rng.uniform(0.3, 0.45)
    return ((u * n + rng.random()) % 1.0 < duty).astype(np.float32)


def _dots(size, rng):
    """Dots on a hexagonal lattice: on a square one, dots blurred to 32 px read as a checkerboard
    turned 45 degrees."""
    u, v = _grid(size, rng)
    n = rng.uniform(2.5, 4.5)
    row_pitch = np.sqrt(3.0) / 2.0  # hexagonal rows are sqrt(3)/2 of the dot spacing apart
    y = v * n / row_pitch + rng.random()
    row = np.floor(y)
    fu = (u * n + rng.random() + 0.5 * (row % 2)) % 1.0 - 0.5
    fv = (y % 1.0 - 0.5) * row_pitch
    r = rng.uniform(0.24, 0.34)
    return (fu ** 2 + fv ** 2 < r ** 2).astype(np.float32)


def _bricks(size, rng):
    """Horizontal courses only: turned by 90 degrees, bricks blurred to 32 px pass for tiles."""
    u, v = _grid(size, rng)
    rows = rng.uniform(3, 5)
    y = v * rows + rng.random()
    row = np.floor(y)
    x = u * rows / 2.0 + 0.5 * (row % 2) + rng.random()
    mortar = rng.uniform(0.14, 0.2)
    fy, fx = y % 1.0, x % 1.0
    return ((fy < mortar) | (fx < mortar * 0.6)).astype(np.float32)


def _tiles(size, rng):
    u, v = _grid(size, rng)
    n = rng.uniform(2.5, 4)
    grout = rng.uniform(0.18, 0.24)
    fu, fv = (u * n + rng.random()) % 1.0, (v * n + rng.random()) % 1.0
    return ((fu < grout) | (fv < grout)).astype(np.float32)


def _wood(size, rng):
    u, v = _grid(size, rng, rotate="quarter")
    warp = _fbm(size, rng, base=2, octaves=3)
    rings = (u * rng.uniform(5, 9) + 1.5 * warp + 0.15 * v) % 1.0
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * rings)
    fine = _fbm(size, rng, base=16, octaves=1)
    return np.clip(0.8 * grain ** 1.5 + 0.2 * fine * grain, 0, 1).astype(np.float32)


def _marble(size, rng):
    u, v = _grid(size, rng, rotate="free")
    turb = _fbm(size, rng, base=3, octaves=4)
    veins = np.abs(np.sin((u * rng.uniform(2, 4) + 4.0 * turb) * np.pi))
    return np.clip(1.0 - veins / 0.5, 0, 1).astype(np.float32) ** 0.8


def _solid(size, rng):
    return (_fbm(size, rng, base=2, octaves=2) - 0.5).astype(np.float32) * 0.3 + 0.0


_MASKS = {"solid": _solid, "checkerboard": _checker, "stripes": _stripes, "polka dots": _dots,
          "bricks": _bricks, "wood": _wood, "marble": _marble, "tiles": _tiles}


def _jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small colour and brightness jitter that keeps the named colour."""
    for _ in range(8):
        out = np.clip(rgb * rng.uniform(0.92, 1.08) + rng.normal(0, 0.025, 3), 0, 1).astype(np.float32)
        if nearest_colour(out) == nearest_colour(rgb):
            return out
    return rgb


def _silhouette(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random blobby object mask and a Lambert-like shading factor over it."""
    u, v = _grid(size, rng)
    cx, cy = rng.uniform(0.4, 0.6, 2)
    rx, ry = rng.uniform(0.25, 0.42, 2)
    wobble = 1.0 + 0.15 * (_value_noise(size, rng, 3) - 0.5)
    r2 = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
    mask = (r2 < wobble).astype(np.float32)
    nz = np.sqrt(np.clip(1.0 - r2 / wobble, 0, 1))
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.6, 0.1), 1.0])
    light /= np.linalg.norm(light)
    nx, ny = (u - cx) / rx, (v - cy) / ry
    shade = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    return mask, (0.55 + 0.45 * shade).astype(np.float32)


def render_material(material: Material, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """float32 [size, size, 3] sRGB image in [0, 1] of `material`."""
    main = _jitter(np.array(PALETTE[material.colour], np.float32), rng)
    second = (_jitter(np.array(PALETTE[material.second], np.float32), rng) if material.second
              else shade_of(material.colour))
    mask = _MASKS[material.pattern](size, rng)
    if material.pattern == "solid":  # mask is a brightness wobble, not a second tone
        img = np.clip(main[None, None] * (1.0 + mask[..., None]), 0, 1)
    else:
        img = main[None, None] * (1 - mask[..., None]) + second[None, None] * mask[..., None]
    img = img + rng.normal(0, 0.01, img.shape).astype(np.float32)
    if material.on_object is not None:
        obj, shade = _silhouette(size, rng)
        # A random solid background, as the renderer draws behind every SDS view.
        bg = rng.random(3).astype(np.float32)
        img = img * shade[..., None] * obj[..., None] + bg * (1 - obj[..., None])
    return np.clip(img, 0, 1).astype(np.float32)


def sample(rng: np.random.Generator, size: int = 64, bare_prob: float = 0.15,
           **kwargs) -> tuple[np.ndarray, str, Material]:
    """One random training example: (image [size, size, 3], caption, material). `bare_prob` of
    the single-colour swatches get a caption that names the pattern alone (see `_BARE`)."""
    material = random_material(rng, **kwargs)
    bare = bool(rng.random() < bare_prob)
    return render_material(material, rng, size), material.caption(rng, bare=bare), material


def held_out_captions() -> list[tuple[str, Material]]:
    """The 20 evaluation captions: single-colour swatch captions of the held-out pairs."""
    return [(_ONE[pattern][0].format(c=colour), Material(pattern, colour)) for colour, pattern in HELD_OUT]


def seen_captions(n: int = 20) -> list[tuple[str, Material]]:
    """`n` captions of pairs that *are* drawn in training, in the held-out captions' form, spread
    over every pattern family: the control for the held-out evaluation (a model that misses these
    has not learned the patterns; one that only misses the held-out ones fails to compose)."""
    out: list[tuple[str, Material]] = []
    for k in range(n):
        pattern = PATTERNS[k % len(PATTERNS)]
        colours = [c for c in COLOURS if allowed(c, pattern)]
        colour = colours[(k // len(PATTERNS) * 5 + k) % len(colours)]
        out.append((_ONE[pattern][0].format(c=colour), Material(pattern, colour)))
    return out


__all__ = ["COLOURS", "HELD_OUT", "Material", "OBJECTS", "PALETTE", "PATTERNS", "held_out_captions",
           "nearest_colour", "random_material", "render_material", "sample", "seen_captions", "shade_of",
           "vocabulary_words"]
