"""Report helpers every experiment's report uses: figures and tables written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from rrf_ray.engine.atomic import write_atomic


def save_figure_atomic(fig, path, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at `path`, never half-written."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())

