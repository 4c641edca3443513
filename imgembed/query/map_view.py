"""The collection map as an interactive chart: thumbnails placed by :func:`collection.collection_map`'s
rule, one picture, with an invisible point on each thumbnail that shows the photo's name on hover and
reports a click (Streamlit's chart selection events turn the click into a query).

The figure is a plain Plotly JSON dict (``st.plotly_chart`` draws it): the thumbnails are a single
JPEG laid under the axes, so a map of hundreds of photos costs one image, not hundreds.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from imgembed.index.snapshot import Snapshot
from imgembed.query.collection import grid_shape, map_sample, pca_2d, snap_to_grid, tiles_of
from imgembed.query.thumbnails import contact_map, jpeg_bytes

GAP = 4  # px between thumbnails, as contact_map draws them


@dataclass
class CollectionMap:
    ids: list[int]  # the photos drawn, in point order
    names: list[str]  # their names as shown (path inside the indexed folder)
    cells: np.ndarray  # (n, 2) int: each photo's (col, row)
    cols: int
    rows: int
    cell: int  # thumbnail side, px
    jpeg: bytes  # the thumbnails on one canvas
    total: int  # photos in the index (more than drawn when sampled)

    @property
    def sampled(self) -> bool:
        return len(self.ids) < self.total

    @property
    def size(self) -> tuple[int, int]:
        """The canvas's ``(width, height)`` in px."""
        step = self.cell + GAP
        return self.cols * step + GAP, self.rows * step + GAP

    def centres(self) -> np.ndarray:
        """``(n, 2)`` each thumbnail's centre in the figure's coordinates (px, y upwards)."""
        step = self.cell + GAP
        _, h = self.size
        x = GAP + self.cells[:, 0] * step + self.cell / 2
        y = h - (GAP + self.cells[:, 1] * step + self.cell / 2)
        return np.stack([x, y], axis=1).astype(np.float64)

    def caption(self) -> str:
        """What the map shows, said in one sentence (the sample, when there is one)."""
        n = len(self.ids)
        what = (f"A fixed random sample of {n:,} of the {self.total:,} photos" if self.sampled
                else f"All {n:,} photos")
        return (f"{what}, placed by the two main directions (PCA) of their embeddings: similar photos sit "
                "together. Point at a photo to see its name; click it to search with it.")

    def id_at(self, point_index: int) -> int | None:
        """The photo id of a point of the figure, None for an index the map does not have."""
        return self.ids[point_index] if 0 <= point_index < len(self.ids) else None


def clicked_photo(event, ids: list[int]) -> int | None:
    """The photo id a chart selection event names (Streamlit's ``{"selection": {"points": [...]}}``):
    the point's ``customdata`` id, else its index among ``ids``; None when nothing was clicked."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    if not points:
        return None
    point = points[0]
    custom = point.get("customdata")
    if isinstance(custom, (list, tuple)) and custom and isinstance(custom[0], (int, float)):
        return int(custom[0])
    index = point.get("point_index", point.get("point_number"))
    return ids[index] if isinstance(index, int) and 0 <= index < len(ids) else None


def build_map(snapshot: Snapshot, max_photos: int, cell: int) -> CollectionMap | None:
    """The map of up to ``max_photos`` photos of one published generation (a fixed random sample of
    larger collections); None for an empty index."""
    ids, vecs = map_sample(snapshot, max_photos)
    if len(ids) == 0:
        return None
    cols, rows = grid_shape(len(ids))
    cells = snap_to_grid(pca_2d(vecs), cols, rows)
    rows_by_id = snapshot.rows(ids.tolist())
    canvas = contact_map(tiles_of(ids, rows_by_id, cell), [tuple(c) for c in cells.tolist()], cols, rows, cell, GAP)
    names = [rows_by_id[i].relpath.decode("utf-8", "replace") if i in rows_by_id else f"id {i}" for i in ids.tolist()]
    return CollectionMap(ids.tolist(), names, cells, cols, rows, cell, jpeg_bytes(canvas, quality=80),
                         snapshot.count)


def map_figure(m: CollectionMap) -> dict:
    """The Plotly figure of ``m``: the canvas under invisible, hoverable, clickable points."""
    w, h = m.size
    xy = m.centres()
    uri = "data:image/jpeg;base64," + base64.b64encode(m.jpeg).decode()
    # fixed ranges (no autorange: it pads the axes and shrinks the map), constrained to the domain
    axis = {"visible": False, "fixedrange": True, "showgrid": False, "zeroline": False, "autorange": False,
            "constrain": "domain"}
    return {
        "data": [{
            "type": "scatter", "mode": "markers", "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
            "customdata": [[i, n] for i, n in zip(m.ids, m.names)],
            "hovertemplate": "%{customdata[1]}<extra></extra>",
            "marker": {"symbol": "square", "size": 24, "opacity": 0, "color": "#000"},
            "selected": {"marker": {"opacity": 0}}, "unselected": {"marker": {"opacity": 0}},
            "showlegend": False,
        }],
        "layout": {
            "images": [{"source": uri, "xref": "x", "yref": "y", "x": 0, "y": h, "sizex": w, "sizey": h,
                        "xanchor": "left", "yanchor": "top", "sizing": "stretch", "layer": "below"}],
            "xaxis": {**axis, "range": [0, w]},
            "yaxis": {**axis, "range": [0, h], "scaleanchor": "x", "scaleratio": 1},
            "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
            "hovermode": "closest", "hoverdistance": 40, "dragmode": False, "clickmode": "event+select",
            "plot_bgcolor": "rgba(0,0,0,0)", "paper_bgcolor": "rgba(0,0,0,0)",
        },
    }
