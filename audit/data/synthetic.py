"""Procedural street scenes: a labelled dataset that needs no download.

Every sample is a pure function of ``(seed, index, size)``: it draws from its own
random generator seeded with ``(seed, index)``, so samples can be produced in any
order, independently, with identical results.  Scene layout is drawn in relative
coordinates and textures in pixels scaled with the image height, so a class looks
alike at every resolution.  Classes differ by local colour *and* texture (windows,
bricks, asphalt grain, leaves, paving slabs), while colours overlap between classes
and a random global lighting hides absolute colour, so no single pixel gives a
class away.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from audit.data.base import Sample, SegmentationDataset
from audit.errors import ConfigError

#: bump whenever the drawing code changes, so fingerprints of old sets no longer match
GENERATOR_VERSION = 1

STREET_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "sky",
    "vegetation",
    "car",
    "person",
    "pole",
)
ROAD, SIDEWALK, BUILDING, SKY, VEGETATION, CAR, PERSON, POLE = range(len(STREET_CLASSES))
IGNORE_INDEX = 255

# Cityscapes colours of the same classes, so reports look familiar.
STREET_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (70, 130, 180),
    (107, 142, 35),
    (0, 0, 142),
    (220, 20, 60),
    (153, 153, 153),
)

# Below this, windows, people and poles shrink to a pixel or two and stop being recognisable.
_MIN_SIZE = (32, 32)

_FACADE_COLOURS = np.array(
    [
        [0.62, 0.55, 0.45],  # sandstone
        [0.55, 0.30, 0.22],  # red brick
        [0.45, 0.45, 0.47],  # concrete
        [0.72, 0.68, 0.60],  # plaster
        [0.40, 0.33, 0.28],  # dark brick
        [0.58, 0.60, 0.64],  # blue-grey render
        [0.70, 0.58, 0.42],  # ochre
    ],
    dtype=np.float32,
)
_CAR_COLOURS = np.array(
    [
        [0.85, 0.85, 0.86],  # white
        [0.10, 0.10, 0.11],  # black
        [0.55, 0.56, 0.58],  # silver
        [0.65, 0.10, 0.10],  # red
        [0.12, 0.22, 0.55],  # blue
        [0.15, 0.32, 0.20],  # dark green
        [0.80, 0.65, 0.15],  # yellow
        [0.35, 0.35, 0.37],  # graphite
    ],
    dtype=np.float32,
)
_CLOTH_COLOURS = np.array(
    [
        [0.10, 0.10, 0.12],
        [0.20, 0.25, 0.45],
        [0.60, 0.15, 0.15],
        [0.75, 0.75, 0.70],
        [0.35, 0.40, 0.25],
        [0.55, 0.45, 0.30],
        [0.85, 0.55, 0.20],
        [0.40, 0.20, 0.45],
    ],
    dtype=np.float32,
)
_SKIN_COLOURS = np.array(
    [[0.92, 0.76, 0.62], [0.78, 0.57, 0.42], [0.55, 0.38, 0.26], [0.36, 0.24, 0.16]],
    dtype=np.float32,
)


def _pick(rng: np.random.Generator, colours: np.ndarray, jitter: float) -> np.ndarray:
    colour = colours[rng.integers(len(colours))] + rng.normal(0.0, jitter, 3)
    return np.clip(colour, 0.0, 1.0).astype(np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` pixels wide."""
    cell = max(cell, 1.0)
    grid = rng.random((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)
    fy = np.arange(h, dtype=np.float32) / cell
    fx = np.arange(w, dtype=np.float32) / cell
    y0, x0 = fy.astype(np.intp), fx.astype(np.intp)
    ty, tx = fy - y0, fx - x0
    ty, tx = (ty * ty * (3 - 2 * ty))[:, None], tx * tx * (3 - 2 * tx)
    rows = grid[y0] * (1 - ty) + grid[y0 + 1] * ty
    return rows[:, x0] * (1 - tx) + rows[:, x0 + 1] * tx


def _gauss(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


@dataclass
class _Scene:
    """The street's geometry in pixels, shared by every drawing step."""

    h: int
    w: int
    scale: float  # texture scale: 1.0 at 128 rows
    horizon: float  # row of the vanishing point
    vx: float  # column of the vanishing point
    road_half: float  # road half-width at the bottom row
    walk_left: float  # sidewalk widths at the bottom row
    walk_right: float

    def depth(self, y: np.ndarray | float) -> np.ndarray:
        """0 at the horizon, 1 at the bottom row: how near a ground point is."""
        t = (np.asarray(y, dtype=np.float32) - self.horizon) / (self.h - self.horizon)
        return np.clip(t, 0, 1)

    def walk(self, side: int) -> float:
        return self.walk_left if side < 0 else self.walk_right


@dataclass
class _Window:
    """A rectangle of the canvas and its pixel coordinates, so shapes are drawn locally."""

    ys: slice
    xs: slice
    yy: np.ndarray  # (h, 1) row coordinates
    xx: np.ndarray  # (1, w) column coordinates

    @property
    def shape(self) -> tuple[int, int]:
        return self.yy.shape[0], self.xx.shape[1]


class _Canvas:
    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), dtype=np.float32)
        self.label = np.zeros((h, w), dtype=np.uint8)

    def window(self, y0: float, y1: float, x0: float, x1: float) -> _Window | None:
        ya, yb = max(0, int(np.floor(y0))), min(self.h, int(np.ceil(y1)) + 1)
        xa, xb = max(0, int(np.floor(x0))), min(self.w, int(np.ceil(x1)) + 1)
        if ya >= yb or xa >= xb:
            return None
        return _Window(
            slice(ya, yb),
            slice(xa, xb),
            np.arange(ya, yb, dtype=np.float32)[:, None],
            np.arange(xa, xb, dtype=np.float32)[None, :],
        )

    def full(self) -> _Window:
        win = self.window(0, self.h, 0, self.w)
        assert win is not None
        return win

    def paint(self, win: _Window, region: np.ndarray, colour: np.ndarray, cls: int) -> None:
        """``colour`` is a (3,) colour or a texture the size of the window."""
        np.copyto(self.label[win.ys, win.xs], np.uint8(cls), where=region)
        np.copyto(self.img[win.ys, win.xs], colour, where=region[..., None], casting="unsafe")


def _draw_sky(rng: np.random.Generator, c: _Canvas, s: _Scene) -> None:
    win = c.full()
    if rng.random() < 0.7:
        zenith = np.array([0.35, 0.55, 0.85], np.float32) + rng.normal(0, 0.05, 3)
    else:  # overcast
        zenith = np.full(3, rng.uniform(0.6, 0.8), np.float32) + rng.normal(0, 0.02, 3)
    haze = zenith * 0.5 + 0.45
    grad = np.clip(win.yy / max(s.horizon, 1.0), 0, 1)[..., None]
    sky = zenith * (1 - grad) + haze * grad
    clouds = _value_noise(rng, s.h, s.w, 24 * s.scale)
    cover = rng.uniform(0.0, 0.8)
    amount = np.clip((clouds - (1 - cover)) * 3, 0, 1)[..., None] * 0.8
    sky = sky * (1 - amount) + np.float32(0.92) * amount
    c.paint(win, np.ones(win.shape, bool), sky, SKY)


def _draw_buildings(rng: np.random.Generator, c: _Canvas, s: _Scene) -> None:
    n = int(rng.integers(3, 8))
    edges = np.concatenate([[0.0], np.sort(rng.uniform(0, s.w, n - 1)), [float(s.w)]])
    fine = _gauss(rng, (s.h, s.w))
    for x0, x1 in itertools.pairwise(edges):
        if rng.random() < 0.2:  # low building, leaves sky down to near the horizon
            top = s.horizon - rng.uniform(0.03, 0.1) * s.h
        else:
            top = rng.uniform(0.02 * s.h, s.horizon - 0.1 * s.h)
        base = _pick(rng, _FACADE_COLOURS, 0.05)
        brick = rng.random() < 0.6
        course = rng.uniform(2.5, 4.0) * s.scale
        windows = rng.random() < 0.9
        px, py = rng.uniform(7, 14) * s.scale, rng.uniform(8, 15) * s.scale
        fx, fy = rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.65)
        ox, oy = rng.uniform(0, px), top + rng.uniform(0.2, 0.6) * py
        if rng.random() < 0.5:
            glass = np.array([0.12, 0.15, 0.2], np.float32) + rng.uniform(0, 0.1)
        else:  # reflecting the sky
            glass = np.array([0.55, 0.65, 0.75], np.float32) + rng.normal(0, 0.05, 3)
        # Draw from the left edge's pixel centre so adjoining blocks neither overlap nor gap.
        win = c.window(top, s.h, x0, x1 - 1)
        if win is None:
            continue
        yy, xx = win.yy, win.xx
        region = (yy >= top) & (xx >= x0) & (xx < x1)
        tex = base * (1 + 0.05 * fine[win.ys, win.xs])[..., None]
        if brick:  # thin darker courses and staggered vertical joints
            row = np.floor((yy - top) / course)
            joint_h = ((yy - top) % course) < max(1.0, 0.3 * course)
            joint_v = ((xx + (row % 2) * course * 1.5) % (course * 3)) < max(1.0, 0.3 * course)
            tex = tex * np.where(joint_h | joint_v, 0.8, 1.0).astype(np.float32)[..., None]
        if windows:  # the strongest cue that this is a facade
            win_mask = (((xx - ox) % px) < fx * px) & (((yy - oy) % py) < fy * py) & (yy > oy)
            frame_shade = (0.8 + 0.3 * ((yy - oy) % py) / py).astype(np.float32)
            tex = np.where(win_mask[..., None], glass * frame_shade[..., None], tex)
        c.paint(win, region, tex, BUILDING)


def _draw_ground(rng: np.random.Generator, c: _Canvas, s: _Scene) -> None:
    win = c.window(s.horizon, s.h, 0, s.w)
    if win is None:
        return
    shape = win.shape
    t = s.depth(win.yy)
    tsafe = np.maximum(t, 0.02)
    dx = win.xx - s.vx
    below = win.yy > s.horizon
    road = below & (np.abs(dx) < t * s.road_half)
    walk_l = below & ~road & (dx < 0) & (-dx < t * (s.road_half + s.walk_left))
    walk_r = below & ~road & (dx > 0) & (dx < t * (s.road_half + s.walk_right))

    # Asphalt: dark grey with coarse grain and patches.
    grey = rng.uniform(0.22, 0.45)
    asphalt = np.array([grey, grey, grey * rng.uniform(0.95, 1.08)], np.float32)
    grain = _gauss(rng, shape) + 1.2 * (_value_noise(rng, *shape, 1.5 * s.scale) - 0.5)
    patches = _value_noise(rng, *shape, 20 * s.scale) - 0.5
    tex = asphalt * (1 + 0.1 * grain + 0.25 * patches)[..., None]
    # Dashed centre line and optional edge lines, labelled road as in Cityscapes.
    lane_x = rng.uniform(-0.2, 0.2) * s.road_half
    lane_w = rng.uniform(0.012, 0.02) * s.w
    paint = np.array([0.9, 0.9, 0.88], np.float32)
    if rng.random() < 0.3:
        paint = np.array([0.9, 0.75, 0.2], np.float32)
    dashes = ((rng.uniform(2, 4) / tsafe) % 1.0) < 0.5
    marks = (np.abs(dx - t * lane_x) < t * lane_w) & dashes
    if rng.random() < 0.5:
        marks |= np.abs(np.abs(dx) - t * s.road_half * 0.92) < t * lane_w * 0.7
    tex = np.where(marks[..., None], paint * (1 + 0.05 * grain[..., None]), tex)
    c.paint(win, road, tex, ROAD)

    # Paving slabs in perspective with a bright kerb along the road.
    shift = rng.normal(0, 0.06, 3) + rng.uniform(-0.15, 0.1)
    base = np.clip(np.array([0.6, 0.58, 0.55]) + shift, 0, 1).astype(np.float32)
    slab = rng.uniform(0.04, 0.08) * s.w
    rows = ((rng.uniform(3, 6) / tsafe) % 1.0) < 0.12
    cols = ((np.abs(dx) / (tsafe * slab)) % 1.0) < 0.1
    shade = np.where(rows | cols, 0.72, 1.0) * (1 + 0.025 * _gauss(rng, shape))
    kerb = np.abs(dx) < t * (s.road_half + rng.uniform(0.02, 0.04) * s.w)
    shade = np.where(kerb, 1.22, shade).astype(np.float32)
    c.paint(win, walk_l | walk_r, base * shade[..., None], SIDEWALK)


def _draw_vegetation(rng: np.random.Generator, c: _Canvas, s: _Scene) -> None:
    full = c.full()
    green = np.array(
        [rng.uniform(0.12, 0.35), rng.uniform(0.3, 0.55), rng.uniform(0.05, 0.2)], np.float32
    )
    leaves = _value_noise(rng, s.h, s.w, 2.0 * s.scale) - 0.5
    clumps = _value_noise(rng, s.h, s.w, 7.0 * s.scale) - 0.5
    boundary = _value_noise(rng, s.h, s.w, 4 * s.scale) - 0.5
    foliage = np.zeros((s.h, s.w), bool)
    trunks = np.zeros((s.h, s.w), bool)
    for _ in range(int(rng.integers(1, 5))):
        foot_t = rng.uniform(0.1, 0.7)
        foot_y = s.horizon + foot_t * (s.h - s.horizon)
        side = -1 if rng.random() < 0.5 else 1
        foot_x = s.vx + side * foot_t * (s.road_half + rng.uniform(0.5, 1.2) * s.walk(side))
        radius = foot_t * s.h * rng.uniform(0.25, 0.45) + 4 * s.scale
        cy = foot_y - radius * rng.uniform(1.3, 2.0)
        trunk_w = max(1.5, radius * 0.12)
        win = c.window(cy, foot_y, foot_x - trunk_w, foot_x + trunk_w)
        if win is not None:
            trunks[win.ys, win.xs] |= (np.abs(win.xx - foot_x) < trunk_w) & (win.yy < foot_y)
        for _ in range(int(rng.integers(3, 7))):
            ox, oy = rng.normal(0, 0.45, 2) * radius
            r = radius * rng.uniform(0.5, 0.8)
            bx, by = foot_x + ox, cy + oy
            win = c.window(by - 1.5 * r, by + 1.5 * r, bx - 1.5 * r, bx + 1.5 * r)
            if win is not None:
                d = np.hypot(win.xx - bx, (win.yy - by) * 1.1) / r
                foliage[win.ys, win.xs] |= d < 1 + 0.5 * boundary[win.ys, win.xs]
    # Bushes and hedges at the foot of the facades.
    for _ in range(int(rng.integers(0, 3))):
        foot_t = rng.uniform(0.3, 1.0)
        foot_y = s.horizon + foot_t * (s.h - s.horizon)
        side = -1 if rng.random() < 0.5 else 1
        cx = s.vx + side * foot_t * (s.road_half + s.walk(side) * rng.uniform(0.9, 1.4))
        rx = foot_t * s.w * rng.uniform(0.05, 0.12) + 3
        ry = rx * rng.uniform(0.4, 0.7)
        win = c.window(foot_y - 1.5 * ry, foot_y + 1.5 * ry, cx - 1.5 * rx, cx + 1.5 * rx)
        if win is not None:
            d = np.hypot((win.xx - cx) / rx, (win.yy - foot_y) / ry)
            foliage[win.ys, win.xs] |= d < 1 + 0.5 * boundary[win.ys, win.xs]
    fine = _gauss(rng, (s.h, s.w))
    tex = green * (1 + 1.0 * leaves + 0.6 * clumps + 0.08 * fine)[..., None]
    bark = np.array([0.3, 0.22, 0.15], np.float32) * (1 + 0.25 * leaves)[..., None]
    c.paint(full, trunks & ~foliage, bark, VEGETATION)
    c.paint(full, foliage, tex, VEGETATION)


def _draw_car(rng: np.random.Generator, c: _Canvas, s: _Scene, foot_y: float) -> None:
    t = float(s.depth(foot_y))
    x = s.vx + t * rng.uniform(-0.75, 0.75) * s.road_half
    w = max(12 * s.scale, t * s.road_half * rng.uniform(0.6, 0.85))
    h = w * rng.uniform(0.6, 0.8)
    paint = _pick(rng, _CAR_COLOURS, 0.04)
    lamp = np.array([0.95, 0.2, 0.15] if rng.random() < 0.5 else [0.95, 0.9, 0.75], np.float32)
    left, right, top = x - w / 2, x + w / 2, foot_y - h
    win = c.window(top, foot_y, left, right)
    if win is None:
        return
    xx, yy = win.xx, win.yy
    inside_x = (xx >= left) & (xx < right)
    body = inside_x & (yy >= top + 0.42 * h) & (yy < foot_y - 0.1 * h)
    # The cabin narrows towards the roof.
    rel = np.clip((yy - top) / (0.42 * h), 0, 1)
    inset = (0.22 - 0.1 * rel) * w
    cabin = (xx >= left + inset) & (xx < right - inset) & (yy >= top) & (yy < top + 0.42 * h)
    glass = (
        (xx >= left + inset + 0.05 * w)
        & (xx < right - inset - 0.05 * w)
        & (yy >= top + 0.1 * h)
        & (yy < top + 0.38 * h)
    )
    wheel_w = 0.17 * w
    wheel_x = ((xx >= left + 0.04 * w) & (xx < left + 0.04 * w + wheel_w)) | (
        (xx < right - 0.04 * w) & (xx >= right - 0.04 * w - wheel_w)
    )
    wheels = wheel_x & (yy >= foot_y - 0.2 * h) & (yy < foot_y)
    lamp_x = ((xx >= left + 0.05 * w) & (xx < left + 0.2 * w)) | (
        (xx < right - 0.05 * w) & (xx >= right - 0.2 * w)
    )
    lamps = lamp_x & (yy >= top + 0.5 * h) & (yy < top + 0.6 * h)
    plate = (np.abs(xx - x) < 0.12 * w) & (yy >= top + 0.7 * h) & (yy < top + 0.8 * h)
    # Glossy paint: a vertical gradient and a bright stripe, smooth unlike asphalt.
    u = np.clip((yy - top) / h, 0, 1)
    gloss = 1.15 - 0.4 * u + 0.25 * np.exp(-((u - 0.45) ** 2) / 0.002)
    tex = np.broadcast_to(paint * gloss[..., None], (*win.shape, 3))
    tex = np.where(
        glass[..., None],
        np.array([0.15, 0.2, 0.28], np.float32) * (0.8 + 0.6 * rel[..., None]),
        tex,
    )
    tex = np.where(lamps[..., None], lamp, tex)
    tex = np.where(plate[..., None], np.float32(0.9), tex)
    tex = np.where(wheels[..., None], np.float32(0.06), tex)
    c.paint(win, body | cabin | wheels, tex, CAR)


def _draw_person(
    rng: np.random.Generator, c: _Canvas, s: _Scene, foot_y: float, on_road: bool
) -> None:
    t = float(s.depth(foot_y))
    if on_road:
        x = s.vx + t * rng.uniform(-0.8, 0.8) * s.road_half
    else:
        side = -1 if rng.random() < 0.5 else 1
        x = s.vx + side * t * (s.road_half + rng.uniform(0.15, 0.85) * s.walk(side))
    h = max(14 * s.scale, t * s.h * rng.uniform(0.4, 0.6))
    stride = rng.uniform(0.0, 0.08) * h
    skin = _pick(rng, _SKIN_COLOURS, 0.03)
    shirt = _pick(rng, _CLOTH_COLOURS, 0.06)
    trousers = _pick(rng, _CLOTH_COLOURS, 0.06)
    top = foot_y - h
    win = c.window(top, foot_y, x - 0.3 * h, x + 0.3 * h)
    if win is None:
        return
    xx, yy = win.xx, win.yy
    u = (yy - top) / h  # 0 at the crown, 1 at the feet
    ax = np.abs(xx - x)
    head = np.hypot(xx - x, yy - top - 0.08 * h) < 0.08 * h + 0.5
    torso_w = 0.14 * h
    torso = (ax < torso_w) & (u >= 0.15) & (u < 0.55)
    arms = (np.abs(ax - torso_w - 0.03 * h) < 0.035 * h + 0.3) & (u >= 0.17) & (u < 0.5)
    leg_off = 0.06 * h + (u - 0.55) / 0.45 * stride
    legs = (np.abs(ax - leg_off) < 0.045 * h + 0.3) & (u >= 0.55) & (u < 1.0)
    folds = 1 + 0.12 * np.sin((xx - x) * 2.5 / s.scale + u * 9)
    tex = np.where((u < 0.55)[..., None], shirt, trousers) * folds[..., None]
    tex = np.where(head[..., None], skin, tex)
    tex = np.where((head & (yy < top + 0.06 * h))[..., None], np.float32(0.1), tex)  # hair
    c.paint(win, head | torso | arms | legs, tex, PERSON)


def _draw_pole(rng: np.random.Generator, c: _Canvas, s: _Scene, foot_y: float) -> None:
    t = float(s.depth(foot_y))
    side = -1 if rng.random() < 0.5 else 1
    x = s.vx + side * t * (s.road_half + rng.uniform(0.1, 0.5) * s.walk(side))
    h = t * s.h * rng.uniform(1.0, 1.6) + 10 * s.scale
    half = max(1.0, t * s.w * 0.008 + 0.6 * s.scale)
    top = foot_y - h
    reach = -side * h * rng.uniform(0.12, 0.25) if rng.random() < 0.5 else 0.0
    metal = np.full(3, rng.uniform(0.25, 0.6), np.float32) + rng.normal(0, 0.03, 3)
    lo, hi = min(x - half, x + reach), max(x + half, x + reach)
    win = c.window(top - half, foot_y, lo, hi)
    if win is None:
        return
    xx, yy = win.xx, win.yy
    region = (np.abs(xx - x) < half) & (yy >= top) & (yy < foot_y)
    if reach:  # a street-light arm reaching over the road
        region |= (xx >= min(x, x + reach)) & (xx <= max(x, x + reach)) & (np.abs(yy - top) < half)
    # Cylinder shading across the shaft: bright core, dark rims; joints every few pixels.
    across = 1.25 - 0.6 * np.clip(np.abs(xx - x + 0.3 * half) / half, 0, 1)
    bands = np.where(((yy - top) % (9 * s.scale)) < 1, 0.8, 1.0)
    c.paint(win, region, metal * (across * bands)[..., None], POLE)


def _draw_objects(rng: np.random.Generator, c: _Canvas, s: _Scene) -> None:
    ground = s.h - s.horizon
    objects: list[tuple[float, str]] = []
    for _ in range(int(rng.integers(1, 5))):
        objects.append((s.horizon + rng.uniform(0.15, 1.05) * ground, "car"))
    for _ in range(int(rng.integers(1, 6))):
        objects.append((s.horizon + rng.uniform(0.2, 1.0) * ground, "person"))
    for _ in range(int(rng.integers(1, 5))):
        objects.append((s.horizon + rng.uniform(0.15, 1.0) * ground, "pole"))
    # Far objects first so nearer ones occlude them.
    for foot_y, kind in sorted(objects, key=lambda o: o[0]):
        if kind == "car":
            _draw_car(rng, c, s, foot_y)
        elif kind == "person":
            _draw_person(rng, c, s, foot_y, on_road=rng.random() < 0.2)
        else:
            _draw_pole(rng, c, s, foot_y)


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge padding."""
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4


def _apply_camera(rng: np.random.Generator, img: np.ndarray, s: _Scene) -> np.ndarray:
    # Uneven illumination (shadows, vignetting) so absolute colour is unreliable.
    light = 1 + 0.35 * (_value_noise(rng, s.h, s.w, 48 * s.scale) - 0.5)
    img = img * light[..., None]
    contrast = rng.uniform(0.75, 1.2)
    img = (img - 0.5) * contrast + 0.5
    img = img * rng.uniform(0.7, 1.25) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.2)
    if rng.random() < 0.4:
        img = _blur(img)
    img = img + rng.uniform(0.005, 0.03) * _gauss(rng, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _ignore_borders(label: np.ndarray) -> np.ndarray:
    """Mark one pixel along each class boundary as ignore, like Cityscapes' unlabelled seams."""
    border = np.zeros(label.shape, bool)
    border[:, :-1] |= label[:, :-1] != label[:, 1:]
    border[:-1, :] |= label[:-1, :] != label[1:, :]
    return np.where(border, IGNORE_INDEX, label)


def render_street_scene(
    seed: int, index: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw sample ``index`` of set ``seed``: (H, W, 3) float32 image, (H, W) int64 mask."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    h, w = size
    scale = h / 128
    horizon = rng.uniform(0.36, 0.5) * h
    scene = _Scene(
        h=h,
        w=w,
        scale=scale,
        horizon=horizon,
        vx=rng.uniform(0.35, 0.65) * w,
        road_half=rng.uniform(0.3, 0.5) * w,
        walk_left=rng.uniform(0.12, 0.35) * w,
        walk_right=rng.uniform(0.12, 0.35) * w,
    )
    canvas = _Canvas(h, w)
    _draw_sky(rng, canvas, scene)
    _draw_buildings(rng, canvas, scene)
    _draw_ground(rng, canvas, scene)
    _draw_vegetation(rng, canvas, scene)
    _draw_objects(rng, canvas, scene)
    img = _apply_camera(rng, canvas.img, scene)
    return img, _ignore_borders(canvas.label.astype(np.int64))


class SyntheticStreetScenes(SegmentationDataset):
    """``num_samples`` procedural street scenes of ``size`` = (H, W), reproducible from ``seed``."""

    kind = "synthetic"
    class_names = STREET_CLASSES
    ignore_index = IGNORE_INDEX
    palette = STREET_PALETTE

    def __init__(
        self, num_samples: int = 64, *, seed: int = 0, size: tuple[int, int] = (128, 256)
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"must be a positive integer, got {num_samples!r}", key="num_samples")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"must be a non-negative integer, got {seed!r}", key="seed")
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            or size[0] < _MIN_SIZE[0]
            or size[1] < _MIN_SIZE[1]
        ):
            raise ConfigError(
                f"must be (height, width), each an integer >= {_MIN_SIZE[0]}, got {size!r}",
                key="size",
            )
        self.num_samples = num_samples
        self.seed = seed
        self.size = (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"sample index must be an integer, got {type(index).__name__}")
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"sample {index} out of range for {self.num_samples} synthetic samples"
            )
        img, mask = render_street_scene(self.seed, int(index), self.size)
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            mask=torch.from_numpy(mask),
            name=f"synthetic-{int(index):06d}",
        )

    def image_size(self, index: int) -> tuple[int, int]:
        return self.size

    def fingerprint(self) -> str:
        payload = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "size": [self.size[0], self.size[1]],
            "generator_version": GENERATOR_VERSION,
        }
