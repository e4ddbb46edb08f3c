"""What each axis of a tensor holds, followed through Reshapes and Transposes to find images again.

Swin's patch merging and window partitions, and MobileViT's unfold/fold, reshape a 4-D feature map
through tensors of higher rank and back. A Reshape keeps the elements in row-major order, so which
image axis each output axis comes from follows from the static sizes alone::

    (1,56,56,96) NHWC   N | H56 | W56 | C96
    Reshape (1,28,2,28,2,96)     | H28 | H2 | W28 | W2 | C96       H56 split: outer H28, inner H2
    Transpose (0,1,3,4,2,5)      | H28 | W28 | W2 | H2 | C96
    Reshape (1,28,28,384)        | H28 | W28 | W2 H2 C96           an image: channels are offset x channel

Each axis is a tuple of ``Atom``s, major to minor. An atom is ``stride`` steps of its kind's index
per step of its own, so an atom split in two keeps the order of its parts. ``image_layout`` says
when a 4-D tensor's atoms are an image: batch atoms alone on axis 0, one axis holding the outermost
H atoms in order, one the outermost W atoms, and the last axis all C atoms plus any inner H/W atoms
(space-to-depth). Only fully static shapes take part; a cut between sizes that do not divide ends the
chain: nothing is guessed.
"""

from __future__ import annotations

from itertools import permutations
from typing import NamedTuple

__all__ = ["Atom", "Axes", "seed", "reshape", "transpose", "contract_last", "image_layout", "static_shape"]


class Atom(NamedTuple):
    """A factor of one image axis (kind N, H, W or C) of ``size`` values, ``stride`` apart in that axis."""

    kind: str
    size: int
    stride: int = 1


Axes = tuple[tuple[Atom, ...], ...]


def static_shape(shape) -> tuple[int, ...] | None:
    """``shape`` when every size is a known int, else None (a symbolic size ends a chain)."""
    if shape is None or not all(isinstance(size, int) and size > 0 for size in shape):
        return None
    return tuple(shape)


def seed(shape: tuple[int, ...], channel_axis: int) -> Axes | None:
    """The atoms of a 4-D tensor of proven layout: N, H, W, C one per axis (size 1 holds nothing)."""
    if len(shape) != 4 or channel_axis not in (1, 2, 3):
        return None
    spatial = iter("HW")  # the other two axes in order, as Layout.hw_axes reads them
    kinds = ["N", *("C" if axis == channel_axis else next(spatial) for axis in (1, 2, 3))]
    return tuple((Atom(kind, size),) if size > 1 else () for kind, size in zip(kinds, shape))


def reshape(axes: Axes, shape: tuple[int, ...]) -> Axes | None:
    """Lay the atoms out row-major and cut them into ``shape``; an atom is split into an outer and an
    inner part where the cut divides it. None when a cut falls between sizes that do not divide."""
    queue = [atom for axis in axes for atom in axis]
    out = []
    for size in shape:
        taken: list[Atom] = []
        needed = size
        while needed > 1:
            if not queue:
                return None
            atom = queue.pop(0)
            if needed % atom.size == 0:
                taken.append(atom)
                needed //= atom.size
            elif atom.size % needed == 0:
                inner = atom.size // needed
                taken.append(Atom(atom.kind, needed, atom.stride * inner))
                queue.insert(0, Atom(atom.kind, inner, atom.stride))
                needed = 1
            else:
                return None
        out.append(tuple(taken))
    return tuple(out) if not queue else None


def transpose(axes: Axes, perm: list[int] | None) -> Axes | None:
    perm = list(range(len(axes)))[::-1] if perm is None else perm
    if sorted(perm) != list(range(len(axes))):
        return None
    return tuple(axes[axis] for axis in perm)


def _outermost(axes: Axes, kind: str) -> list[Atom]:
    return sorted((atom for axis in axes for atom in axis if atom.kind == kind), key=lambda atom: -atom.stride)


def contract_last(axes: Axes, size: int) -> Axes | None:
    """The atoms after ``x[..., K] @ w[K, size]``: the last axis becomes ``size`` fresh channels, when it held
    every channel and, of H and W, only offsets finer than the pixels kept on other axes (a patch merging's
    reduction). Any other contraction mixes pixels: None."""
    if not axes:
        return None
    last, rest = axes[-1], axes[:-1]
    for atom in last:
        if atom.kind == "N":
            return None
        if atom.kind in ("H", "W"):
            kept = [other.stride for axis in rest for other in axis if other.kind == atom.kind]
            if not kept or atom.stride >= min(kept):
                return None
    if any(atom.kind == "C" for axis in rest for atom in axis):
        return None
    return (*rest, (Atom("C", size),) if size > 1 else ())


def _holds_outermost(axis: tuple[Atom, ...], order: list[Atom], kind: str) -> bool:
    if any(atom.kind != kind for atom in axis):
        return False
    if not order:
        return not axis
    return len(axis) > 0 and list(axis) == order[: len(axis)]


def image_layout(axes: Axes) -> int | None:
    """The channel axis when the 4-D tensor of ``axes`` is an image (see the module docstring), else None."""
    if len(axes) != 4:
        return None
    batch = [atom for axis in axes for atom in axis if atom.kind == "N"]
    if list(axes[0]) != batch:  # window or head batches, or images folded into other axes
        return None
    heights, widths = _outermost(axes, "H"), _outermost(axes, "W")
    found = set()
    for height, width, channel in permutations((1, 2, 3)):
        if _holds_outermost(axes[height], heights, "H") and _holds_outermost(axes[width], widths, "W"):
            found.add(channel)  # what is left (C and inner H/W atoms) lies on the channel axis
    if len(found) != 1:
        return None
    (channel,) = found
    return channel
