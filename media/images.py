"""Still images of rendered clips: the poster frame of a clip and the contact sheet of a run."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def poster_jpeg(frames: np.ndarray, *, max_side: int = 512, quality: int = 85) -> bytes:
    """JPEG of the middle frame, scaled down so its longer side is at most `max_side`."""
    image = Image.fromarray(np.asarray(frames[len(frames) // 2]), mode="RGB")
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def contact_sheet(posters: list[tuple[str, bytes]], columns: int = 6, cell_height: int = 96) -> bytes:
    """A JPEG grid of poster frames, each captioned with its label (one or two lines)."""
    if not posters:
        raise ValueError("no posters for a contact sheet")
    cells = []
    for label, data in posters:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        width = max(1, round(image.width * cell_height / image.height))
        cells.append((label, image.resize((width, cell_height))))
    cell_w = max(img.width for _, img in cells)
    caption = 26
    rows = (len(cells) + columns - 1) // columns
    cols = min(columns, len(cells))
    sheet = Image.new("RGB", (cols * (cell_w + 4) + 4, rows * (cell_height + caption + 4) + 4), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(cells):
        x = 4 + (i % columns) * (cell_w + 4)
        y = 4 + (i // columns) * (cell_height + caption + 4)
        sheet.paste(image, (x + (cell_w - image.width) // 2, y))
        lines = [line[: max(8, cell_w // 6)] for line in label.split("\n")[:2]]
        draw.multiline_text((x, y + cell_height + 1), "\n".join(lines), fill=(230, 230, 230), spacing=1)
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=85)
    return out.getvalue()


def line_chart_png(values: list[float], *, title: str = "", width: int = 640, height: int = 320) -> bytes:
    """A PNG line chart of a series (e.g. a training loss per step) with its range labelled."""
    if not values:
        raise ValueError("no values to chart")
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    left, top, right, bottom = 64, 28, width - 16, height - 28
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    n = max(1, len(values) - 1)
    points = [(left + (right - left) * i / n, bottom - (bottom - top) * (v - lo) / span) for i, v in enumerate(values)]
    draw.line(points if len(points) > 1 else points * 2, fill=(31, 119, 180), width=2)
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text((4, top), f"{hi:.4g}", fill=(0, 0, 0))
    draw.text((4, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
    draw.text((left, bottom + 6), "1", fill=(0, 0, 0))
    draw.text((right - 40, bottom + 6), str(len(values)), fill=(0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
