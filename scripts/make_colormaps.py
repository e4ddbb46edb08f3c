"""Write fmonnx/data/colormaps.npz: 256-entry RGB tables of common matplotlib colormaps.

Run: python scripts/make_colormaps.py   (needs matplotlib; the render path then does not)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

NAMES = ("viridis", "gray", "magma", "inferno", "plasma", "cividis", "turbo", "coolwarm", "RdBu_r", "seismic", "jet")


def main() -> None:
    tables = {}
    for name in NAMES:
        samples = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
        tables[name] = np.round(samples * 255).astype(np.uint8)
    target = Path(__file__).resolve().parent.parent / "fmonnx" / "data" / "colormaps.npz"
    np.savez_compressed(target, **tables)
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
