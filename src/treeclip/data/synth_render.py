"""Traits and rendering for the miniature tree of life.

A taxon's appearance is a vector of `TRAIT_DIM` unbounded latent values (one per name in `TRAITS`). The
generator evolves these vectors down the tree; `Phenotype.from_traits` squashes them into drawable
parameters (sigmoids/tanh for sizes and colours, an argmax for the pattern kind, bins for counts), so nearby
vectors look alike and far-apart ones differ in shape, colour, pattern, markings and appendages at once.

`render` draws one photo of a phenotype with PIL's ImageDraw at twice the target size (for anti-aliasing)
in a random pose (rotation, mirror, position, scale) on a random muted background with clutter, then
applies a random exposure gain and Gaussian sensor noise.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

TRAITS: tuple[str, ...] = (
    "elongation", "squareness", "lobes", "lobe_depth", "taper",
    "body_hue", "body_saturation", "body_value",
    "pattern_hue", "pattern_saturation", "pattern_value", "accent_hue", "accent_value",
    "pattern_plain", "pattern_stripes", "pattern_spots", "pattern_line", "pattern_rings",
    "pattern_count", "pattern_width", "eye_size", "eye_position", "mark_size",
    "legs", "leg_length", "leg_width", "leg_sweep", "tail_length", "tail_fork", "antennae", "fins",
    "appendage_tone",
)
TRAIT_DIM = len(TRAITS)
PATTERNS = ("plain", "stripes", "spots", "line", "rings")
SUPERSAMPLE = 2
_LOBES = (0, 0, 0, 3, 4, 5, 6, 8)
_OUTLINE_POINTS = 48
_PUPIL = (20, 18, 16)
RGB = tuple[int, int, int]
_T = {name: i for i, name in enumerate(TRAITS)}


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _rgb(hue: float, saturation: float, value: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0.0), 1.0), min(max(value, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


@dataclass(frozen=True)
class Phenotype:
    """Drawable parameters of a species; lengths are in units of the body's half-length."""

    outline: np.ndarray  # [n, 2] body outline, head towards +x
    width: float  # body half-width
    body: RGB
    pattern_colour: RGB
    accent: RGB
    appendage: RGB
    pattern: str
    pattern_count: int
    pattern_width: float
    eye_size: float
    eye_x: float
    mark_size: float
    leg_pairs: int
    leg_length: float
    leg_width: float
    leg_sweep: float
    tail_length: float
    tail_fork: float
    antennae: float
    fins: float

    @classmethod
    def from_traits(cls, traits: np.ndarray) -> Phenotype:
        """Squash a latent trait vector into drawable parameters."""
        t = {name: float(traits[i]) for name, i in _T.items()}
        width = 1.0 / (1.3 + 2.2 * _sig(t["elongation"]))
        body_hue = t["body_hue"] * 0.3
        body = _rgb(body_hue, 0.4 + 0.55 * _sig(t["body_saturation"]), 0.35 + 0.6 * _sig(t["body_value"]))
        pattern_colour = _rgb(body_hue + 0.5 * math.tanh(t["pattern_hue"]), 0.3 + 0.7 * _sig(t["pattern_saturation"]),
                              0.1 + 0.85 * _sig(t["pattern_value"]))
        kinds = [t[f"pattern_{kind}"] for kind in PATTERNS]
        return cls(
            outline=_outline(t, width), width=width, body=body, pattern_colour=pattern_colour,
            accent=_rgb(t["accent_hue"] * 0.3, 0.9, 0.5 + 0.5 * _sig(t["accent_value"])),
            appendage=_mix(_mix(body, (0, 0, 0), 0.45), pattern_colour, _sig(t["appendage_tone"])),
            pattern=PATTERNS[int(np.argmax(kinds))],
            pattern_count=2 + int(4.999 * _sig(t["pattern_count"])),
            pattern_width=0.25 + 0.5 * _sig(t["pattern_width"]),
            eye_size=0.04 + 0.14 * _sig(t["eye_size"]), eye_x=0.35 + 0.4 * _sig(t["eye_position"]),
            mark_size=max(0.0, 0.5 * math.tanh(t["mark_size"])),
            leg_pairs=int(4.999 * _sig(t["legs"])), leg_length=0.25 + 0.7 * _sig(t["leg_length"]),
            leg_width=0.03 + 0.07 * _sig(t["leg_width"]), leg_sweep=0.9 * math.tanh(t["leg_sweep"]),
            tail_length=max(0.0, 0.9 * math.tanh(t["tail_length"])), tail_fork=_sig(t["tail_fork"]),
            antennae=max(0.0, 0.8 * math.tanh(t["antennae"])), fins=max(0.0, 0.6 * math.tanh(t["fins"])),
        )


def _outline(t: dict[str, float], width: float) -> np.ndarray:
    """A tapered, optionally lobed superellipse of half-length 1 and half-width `width`."""
    theta = np.linspace(0.0, 2.0 * math.pi, _OUTLINE_POINTS, endpoint=False)
    power = 2.0 / (1.7 + 2.8 * _sig(t["squareness"]))
    cos, sin = np.cos(theta), np.sin(theta)
    x = np.sign(cos) * np.abs(cos) ** power
    y = np.sign(sin) * np.abs(sin) ** power * width * (1.0 + 0.35 * math.tanh(t["taper"]) * x)
    lobes = _LOBES[int(7.999 * _sig(t["lobes"]))]
    radius = 1.0 + (0.05 + 0.25 * _sig(t["lobe_depth"])) * np.cos(lobes * theta) if lobes else 1.0
    return np.stack([x * radius, y * radius], axis=1)


@dataclass(frozen=True)
class _Pose:
    """Body units → canvas pixels: rotate, mirror, scale, translate."""

    centre: np.ndarray
    matrix: np.ndarray  # 2x2, includes the scale (pixels per body half-length)
    scale: float

    def __call__(self, points: np.ndarray | list[tuple[float, float]]) -> list[float]:
        pts = np.asarray(points, dtype=np.float64) @ self.matrix.T + self.centre
        return pts.ravel().tolist()

    def px(self, length: float) -> int:
        return max(1, round(length * self.scale))


def _random_pose(rng: np.random.Generator, canvas: int) -> _Pose:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    scale = canvas * rng.uniform(0.28, 0.38)
    centre = canvas * (0.5 + rng.uniform(-0.1, 0.1, size=2))
    c, s = math.cos(angle), math.sin(angle)
    matrix = scale * np.array([[c, -s * mirror], [s, c * mirror]])
    return _Pose(centre=centre, matrix=matrix, scale=scale)


@functools.lru_cache(maxsize=8)
def _grid(canvas: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(canvas, dtype=np.float32) + 0.5) / canvas - 0.5
    return np.meshgrid(axis, axis)


def _background(rng: np.random.Generator, canvas: int) -> Image.Image:
    """A muted two-colour gradient in a random direction, with a few pebbles of clutter."""
    hue, sat, val = rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.9)
    near = np.array(_rgb(hue, sat, val), dtype=np.float32)
    far = np.array(_rgb(hue + rng.uniform(-0.08, 0.08), sat, val + rng.uniform(-0.25, 0.25)), dtype=np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    xx, yy = _grid(canvas)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle) + 0.71) / 1.42
    image = Image.fromarray((near + (far - near) * ramp[..., None]).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 5))):
        x, y = rng.uniform(0, canvas, size=2)
        rx, ry = canvas * rng.uniform(0.02, 0.08, size=2)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_rgb(hue + rng.uniform(-0.1, 0.1), sat,
                                                                  val + rng.uniform(-0.3, 0.3)))
    return image


def _draw_appendages(draw: ImageDraw.ImageDraw, p: Phenotype, pose: _Pose) -> None:
    """Legs, tail, antennae and fins, drawn below the body."""
    w, colour = p.width, p.appendage
    for x in np.linspace(-0.45, 0.45, p.leg_pairs) if p.leg_pairs > 1 else [0.0] * p.leg_pairs:
        for side in (1.0, -1.0):
            length = p.leg_length
            knee = (x + 0.2 * p.leg_sweep * length, side * (0.7 * w + 0.6 * length))
            foot = (x + (0.7 * p.leg_sweep - 0.1) * length, side * (0.7 * w + 0.85 * length))
            draw.line(pose([(x, side * 0.7 * w), knee, foot]), fill=colour, width=pose.px(p.leg_width), joint="curve")
    if p.tail_length > 0.05:
        end, spread = -1.0 - p.tail_length, 0.35 * w * (0.2 + 2.5 * p.tail_fork)
        tail = [(-0.8, 0.35 * w), (end, spread), (-1.0 - 0.6 * p.tail_length, 0.0), (end, -spread), (-0.8, -0.35 * w)]
        draw.polygon(pose(tail), fill=colour)
    for side in (1.0, -1.0):
        if p.antennae > 0.05:
            tip = (1.0 + 0.9 * p.antennae, side * (0.2 * w + 0.6 * p.antennae))
            draw.line(pose([(0.9, side * 0.2 * w), tip]), fill=colour, width=pose.px(0.03))
            _disc(draw, pose, tip, 0.06, colour)
        if p.fins > 0.05:
            fin = [(0.15, side * 0.8 * w), (-0.35, side * 0.8 * w), (-0.45, side * (0.8 * w + p.fins))]
            draw.polygon(pose(fin), fill=colour)


def _disc(draw: ImageDraw.ImageDraw, pose: _Pose, centre: tuple[float, float], radius: float, fill: RGB) -> None:
    x, y = pose([centre])
    r = radius * pose.scale
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _draw_pattern(draw: ImageDraw.ImageDraw, p: Phenotype, pose: _Pose, rng: np.random.Generator) -> None:
    """The body pattern in body coordinates; the caller clips it to the body outline."""
    n, colour, w = p.pattern_count, p.pattern_colour, p.width
    period = 2.0 / n
    if p.pattern == "stripes":
        for k in range(n):
            x0 = -1.0 + (k + 0.25) * period
            band = [(x0, -2.0), (x0 + p.pattern_width * period, -2.0),
                    (x0 + p.pattern_width * period, 2.0), (x0, 2.0)]
            draw.polygon(pose(band), fill=colour)
    elif p.pattern == "spots":
        for x, y in zip(rng.uniform(-0.85, 0.85, 2 * n), rng.uniform(-0.8, 0.8, 2 * n) * w):
            _disc(draw, pose, (x, y), 0.1 + 0.2 * p.pattern_width * w, colour)
    elif p.pattern == "line":
        half = (0.15 + 0.3 * p.pattern_width) * w
        draw.polygon(pose([(-2.0, -half), (2.0, -half), (2.0, half), (-2.0, half)]), fill=colour)
    elif p.pattern == "rings":
        for k in range(1, n + 1):
            ring = p.outline * (k / (n + 0.5))
            draw.line(pose(np.vstack([ring, ring[:1]])), fill=colour, width=pose.px(0.5 * p.pattern_width / n))


def _draw_markings(draw: ImageDraw.ImageDraw, p: Phenotype, pose: _Pose) -> None:
    """A dorsal patch and a pair of eyes with pupils."""
    if p.mark_size > 0.03:
        m = p.mark_size
        draw.polygon(pose([(-0.2 + m, 0.0), (-0.2, m * p.width), (-0.2 - m, 0.0), (-0.2, -m * p.width)]),
                     fill=p.accent)
    for side in (1.0, -1.0):
        eye = (p.eye_x, side * 0.4 * p.width)
        _disc(draw, pose, eye, p.eye_size, p.accent)
        _disc(draw, pose, eye, 0.5 * p.eye_size, _PUPIL)


def render(phenotype: Phenotype, rng: np.random.Generator, size: int) -> Image.Image:
    """One `size`×`size` RGB photo of `phenotype` in a random pose, background, exposure and noise."""
    canvas = size * SUPERSAMPLE
    image = _background(rng, canvas)
    pose = _random_pose(rng, canvas)
    draw = ImageDraw.Draw(image)
    _draw_appendages(draw, phenotype, pose)
    body = pose(phenotype.outline)
    skin = Image.new("RGB", (canvas, canvas), phenotype.body)
    _draw_pattern(ImageDraw.Draw(skin), phenotype, pose, rng)
    mask = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(mask).polygon(body, fill=255)
    image.paste(skin, mask=mask)
    draw.line(body + body[:2], fill=_mix(phenotype.body, (0, 0, 0), 0.55), width=SUPERSAMPLE)
    _draw_markings(draw, phenotype, pose)
    pixels = np.asarray(image.reduce(SUPERSAMPLE), dtype=np.float32) * rng.uniform(0.85, 1.15)
    pixels += rng.normal(0.0, rng.uniform(1.5, 6.0), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
