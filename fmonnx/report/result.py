"""What ``render`` returns: the manifest and its folder, with ways to look at them.

``RenderResult.manifest`` is the dict written to manifest.json; ``render`` does
not keep every image's per-channel numbers in memory, so it is read from the
folder the first time it is asked for. ``outline`` is the manifest without the
per-channel columns, held in memory, enough for a summary. In Jupyter the
result shows itself (``_repr_html_``: layers, their grids, dead channels, a
link to index.html); ``plot_layer`` draws one layer as a matplotlib figure
and ``maps`` gives its (C, H, W) float32 values to keep computing with.
matplotlib is imported only inside ``plot_layer``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np

from ..errors import FmonnxError
from .folder_result import FolderResult

__all__ = ["RenderResult"]

log = logging.getLogger(__name__)

_THUMB_SIDE = 128  # pixels a side of each layer's thumbnail in the notebook view
_THUMB_IMAGES = 4  # images shown side by side per layer in the notebook view


class RenderResult(FolderResult):
    """A finished render: ``manifest`` (the manifest.json dict) and ``folder`` (where it was written).

    ``result["images"]`` reads the manifest too, so code written for the dict keeps working.
    The manifest is read from ``folder`` when first used; ``outline`` (the manifest less each
    layer's ``channels``, kept from the render) serves the summary views meanwhile.
    """

    RECORD = "manifest.json"
    COMMAND = "render"

    def __init__(self, folder: str | Path, outline: dict):
        super().__init__(folder)  # render keeps no per-channel numbers: the manifest is read when asked for
        self._outline: dict | None = outline

    @property
    def manifest(self) -> dict:
        """What manifest.json holds (read from the folder on first use)."""
        return self.record

    def _read_record(self) -> dict:
        manifest = super()._read_record()
        self._outline = None  # the manifest serves the summaries from now on
        return manifest

    @property
    def outline(self) -> dict:
        """The manifest without the per-channel columns (each layer's ``channels``): model, images,
        layers with their summaries, files; kept from the render, so reading it costs nothing."""
        return self._outline if self._outline is not None else self.manifest

    def __repr__(self) -> str:
        outline = self.outline
        layers = len(outline["images"][0]["layers"]) if outline["images"] else 0
        return (
            f"<RenderResult {Path(outline['model']).name}: {layers} layers, "
            f"{len(outline['images'])} image(s) in {self.folder}>"
        )

    @property
    def index(self) -> Path | None:
        """The report page, when it was written."""
        page = super().index
        return page if "index.html" in self.outline.get("files", []) else None

    def layers(self, image: int = 0) -> list[dict]:
        """The manifest entries of image ``image``'s layers, in graph order."""
        return self._image(image)["layers"]

    def layer(self, layer: str | int, image: int = 0) -> dict:
        """One layer's manifest entry, by display name or position."""
        entries = self.layers(image)
        if isinstance(layer, int):
            if not -len(entries) <= layer < len(entries):
                raise FmonnxError(f"there are {len(entries)} layers; pass a position below {len(entries)} or a name")
            return entries[layer]
        for entry in entries:
            if entry["name"] == layer:
                return entry
        names = ", ".join(entry["name"] for entry in entries[:12])
        raise FmonnxError(f"no layer named {layer!r}; the layers are: {names}{', ...' if len(entries) > 12 else ''}")

    def maps(self, layer: str | int, image: int = 0) -> np.ndarray:
        """(C, H, W) float32 activations of ``layer``: exact from its .npy when the render saved arrays,
        else rebuilt from the report's uint8 data (within (max - min) / 510 per channel)."""
        from .page import dequantize, read_layer_data

        entry = self.layer(layer, image)
        if "array" in entry:
            return np.load(self.folder / entry["array"])
        if "report_data" in entry:
            channels = entry["channels"]
            return dequantize(read_layer_data(self.folder, entry["report_data"]), channels["min"], channels["max"])
        raise FmonnxError(
            f"{self.folder} holds no values for {entry['name']!r}; render with the report or with --save-arrays"
        )

    def plot_layer(
        self,
        layer: str | int,
        image: int = 0,
        normalization: str | None = None,
        cmap: str | None = None,
        hide_dead: bool = False,
        ax=None,
    ):
        """Draw every channel of ``layer`` as one tiled picture on a matplotlib figure and return it.

        ``normalization`` and ``cmap`` default to the render's; ``ax`` draws into an existing Axes.
        """
        import matplotlib.pyplot as plt

        from ..stages.colormap import lookup_table
        from ..stages.normalize import normalize
        from ..stages.tile import tile

        entry = self.layer(layer, image)
        options = self.manifest.get("options", {})
        normalization = normalization or options.get("normalization", "standardize")
        cmap = cmap or options.get("cmap", "viridis")
        values = self.maps(layer, image)
        shown = np.arange(values.shape[0])
        if hide_dead and "channels" in entry:
            shown = shown[~np.asarray(entry["channels"]["dead"], dtype=bool)]
        if not shown.size:
            raise FmonnxError(f"every channel of {entry['name']!r} is dead; call plot_layer without hide_dead")
        levels = normalize(values, normalization)[shown]
        grid = tile(levels, "grid", padding=1, pad_value=0, min_tile=0)
        filled = tile(np.ones_like(levels), "grid", padding=1, pad_value=0, min_tile=0).image.astype(bool)
        picture = lookup_table(cmap)[grid.image]
        picture[~filled] = 255
        if ax is None:
            height, width = picture.shape[:2]
            figure, ax = plt.subplots(figsize=(8, max(1.5, 8 * height / width)))
        ax.imshow(picture, interpolation="nearest")
        ax.set_axis_off()
        dead = f", {entry['dead_channels']} dead{' hidden' if hide_dead else ''}" if entry["dead_channels"] else ""
        ax.set_title(f"{entry['name']} [{entry['op']}] {'x'.join(map(str, entry['shape']))}  ({normalization}{dead})")
        return ax.figure

    def _image(self, image: int) -> dict:
        images = self.manifest["images"]
        if not -len(images) <= image < len(images):
            raise FmonnxError(f"this render has {len(images)} image(s); pass image=0..{len(images) - 1}")
        return images[image]

    def _thumbnail(self, entry: dict) -> str:
        from PIL import Image

        from ..stages.png import TITLE_HEIGHT

        try:
            with Image.open(self.folder / entry["png"]) as picture:
                picture.load()
                grid = entry.get("grid") or {}
                width, height = picture.width, picture.height
                if {"columns", "rows", "tile", "padding"} <= set(grid):  # the maps alone, not a wider title bar
                    width = min(width, grid["columns"] * (grid["tile"][1] + grid["padding"]) - grid["padding"])
                    height = min(height, TITLE_HEIGHT + grid["rows"] * (grid["tile"][0] + grid["padding"])
                                 - grid["padding"])
                picture = picture.crop((0, TITLE_HEIGHT, width, height))
        except OSError as exc:
            log.warning("no thumbnail for %s: %s", entry["name"], exc)
            return ""
        picture = picture.convert("RGB")
        zoom = int(grid.get("display_scale", 1))  # small maps are stored at their size
        if zoom > 1:
            picture = picture.resize((picture.width * zoom, picture.height * zoom), Image.Resampling.NEAREST)
        picture.thumbnail((_THUMB_SIDE, _THUMB_SIDE), Image.Resampling.BOX)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=80)  # a fifth of a PNG's size for noisy deep layers
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        title = html.escape(f"{entry['name']}: {entry['png']}")
        return f'<img src="data:image/jpeg;base64,{encoded}" title="{title}" style="margin-right:4px">'

    def _repr_html_(self) -> str:
        manifest = self.outline
        images = manifest["images"][:_THUMB_IMAGES]
        source = manifest.get("source") or {}
        seconds = (manifest.get("seconds") or {}).get("total")
        facts = [
            html.escape(Path(manifest["model"]).name),
            html.escape(str(source.get("framework", "unknown"))),
            html.escape(str(manifest.get("provider"))),
            f"{len(manifest['images'])} image(s)",
        ]
        if seconds is not None:
            facts.append(f"{seconds:.2f} s")
        page = self.index
        link = f' &middot; <a href="{html.escape(page.as_posix())}">{html.escape(page.as_posix())}</a>' if page else ""
        rows = []
        for position, entry in enumerate(images[0]["layers"] if images else []):
            stats = entry.get("stats", {})
            dead = entry["dead_channels"]
            dead_cell = f'<td style="color:#b3261e">{dead} dead</td>' if dead else '<td>0</td>'
            pictures = "".join(
                self._thumbnail(image["layers"][position])
                for image in images
                if position < len(image["layers"]) and image["layers"][position]["name"] == entry["name"]
            )
            rows.append(
                "<tr>"
                f"<td>{position:03d}</td><td><b>{html.escape(entry['name'])}</b></td>"
                f"<td>{html.escape(entry['op'])}</td><td>{'&times;'.join(map(str, entry['shape']))}</td>"
                f"{dead_cell}<td>{stats.get('min', 0):.3g} &hellip; {stats.get('max', 0):.3g}</td>"
                f'<td style="text-align:left">{pictures}</td>'
                "</tr>"
            )
        more = ""
        if len(manifest["images"]) > len(images):
            more = f"<p>Showing the first {len(images)} images; the page shows all.</p>"
        return (
            '<div class="fmonnx-result">'
            f"<p><b>fmonnx</b> &middot; {' &middot; '.join(facts)}{link}</p>{more}"
            '<table><thead><tr><th>#</th><th>layer</th><th>op</th><th>C&times;H&times;W</th><th>dead</th>'
            "<th>range</th><th>maps</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
