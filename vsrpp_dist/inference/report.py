"""`evaluate --report DIR`: one self-contained HTML page a person reads to judge models by eye.

DIR/index.html holds the table and, per sequence, a per-frame PSNR plot, the same crop of a few frames
from bicubic, each model and GT side by side, and temporal profiles; every image is a PNG beside it in
DIR (no network, no script, no framework: it opens from the disk in any browser).

What is shown where, chosen while evaluate streams the frames (nothing but the chosen frames is kept):
- crops: the frames where the models differ most from bicubic (mean |model - bicubic| over the frame,
  averaged over the models; the `CROP_FRAMES` highest are kept whole until the sequence ends), and in
  them the `CROP_SIZE` square where that difference summed over all frames is largest (an integral
  image, so any frame size costs one pass);
- temporal profiles: one image row stacked over time (top: first frame), for GT, bicubic and each
  model, the figure VSR papers use to show flicker; the row is the one where the models differ most
  from bicubic in the first frame (fixed before the rest arrive, so only that row is kept per frame).
"""

from __future__ import annotations

import heapq
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_text
from ..errors import InferenceError
from .comparison import ALL_METRICS, BICUBIC, HEADINGS, SequenceScores, best_label, decimals

GT = "GT"
CROP_SIZE = 96  # output pixels per side (less where the frame is smaller)
CROP_FRAMES = 3
CROP_ZOOM = 2  # crops are enlarged with nearest neighbours so single pixels stay visible
PROFILE_MIN_HEIGHT = 96  # profiles of short sequences repeat each frame's row up to this height


def check_report_folder(folder: Path, overwrite: bool) -> None:
    """Refuse, before any work, a folder that holds files (a report never mixes with other files or
    silently replaces them); --overwrite allows writing over a folder's files of the same names."""
    if folder.exists() and not folder.is_dir():
        raise InferenceError(f"--report {folder}: exists and is not a folder")
    if folder.is_dir() and not overwrite and any(folder.iterdir()):
        raise InferenceError(f"--report {folder}: the folder holds files; choose a new or empty folder "
                             "(or pass --overwrite to write the report's files over those of the same names)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InferenceError("--report needs matplotlib for its plots: pip install 'vsrpp-dist[report]'") from None


@dataclass(order=True)
class _KeptFrame:
    difference: float
    index: int
    frames: dict[str, np.ndarray] = field(compare=False)  # stream (and GT) -> (H, W, 3) uint8


@dataclass
class SequenceVisuals:
    """What the page shows of one sequence, gathered frame by frame."""

    name: str
    labels: list[str]  # streams: bicubic, then the models
    difference_sum: np.ndarray | None = None  # (H, W): |model - bicubic| summed over frames
    kept: list[_KeptFrame] = field(default_factory=list)  # a min-heap of the largest differences
    profile_row: int | None = None
    profiles: dict[str, list[np.ndarray]] = field(default_factory=dict)  # stream -> per frame (W, 3)
    crop_box: tuple[int, int, int] | None = None  # (top, left, size), after the sequence
    crops: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)  # (frame, stream -> crop)
    scores: SequenceScores | None = None


class ReportCollector:
    """Fed by evaluate's scorer (start_sequence, frame per frame in order, end_sequence)."""

    def __init__(self) -> None:
        self.sequences: list[SequenceVisuals] = []

    def start_sequence(self, name: str, labels: list[str]) -> None:
        self.sequences.append(SequenceVisuals(name, labels))

    def frame(self, index: int, gt_chw: torch.Tensor, outputs_chw: dict[str, torch.Tensor]) -> None:
        seq = self.sequences[-1]
        frames = {label: outputs_chw[label].permute(1, 2, 0).numpy() for label in seq.labels}
        frames[GT] = gt_chw.permute(1, 2, 0).numpy()
        bicubic = frames[BICUBIC].astype(np.float32)
        models = [label for label in seq.labels if label != BICUBIC]
        difference = np.mean([np.abs(frames[m].astype(np.float32) - bicubic).mean(axis=2) for m in models], axis=0)
        if seq.difference_sum is None:
            seq.difference_sum = np.zeros_like(difference, dtype=np.float64)
            seq.profile_row = int(difference.mean(axis=1).argmax())
        seq.difference_sum += difference
        for label, frame in frames.items():
            seq.profiles.setdefault(label, []).append(frame[seq.profile_row].copy())
        score = float(difference.mean())
        if len(seq.kept) < CROP_FRAMES or (score, index) > (seq.kept[0].difference, seq.kept[0].index):
            kept = _KeptFrame(score, index, {k: v.copy() for k, v in frames.items()})  # copied only when kept
            (heapq.heappush if len(seq.kept) < CROP_FRAMES else heapq.heapreplace)(seq.kept, kept)

    def end_sequence(self, scores: SequenceScores) -> None:
        seq = self.sequences[-1]
        seq.scores = scores
        size = min(CROP_SIZE, *seq.difference_sum.shape)
        top, left = best_square(seq.difference_sum, size)
        seq.crop_box = (top, left, size)
        for kept in sorted(seq.kept, key=lambda k: k.index):
            seq.crops.append((kept.index, {k: f[top:top + size, left:left + size] for k, f in kept.frames.items()}))
        seq.kept, seq.difference_sum = [], None  # the whole frames are no longer needed


def best_square(values: np.ndarray, size: int) -> tuple[int, int]:
    """(top, left) of the size x size square with the largest sum (first on ties), by an integral image."""
    integral = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    integral[1:, 1:] = values.cumsum(0).cumsum(1)
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    top, left = np.unravel_index(int(sums.argmax()), sums.shape)
    return int(top), int(left)


# -- writing -----------------------------------------------------------------------------------------


def _save_png(folder: Path, name: str, image_hwc: np.ndarray, zoom_y: int = 1, zoom_x: int = 1) -> str:
    from PIL import Image

    if zoom_y > 1 or zoom_x > 1:
        image_hwc = image_hwc.repeat(zoom_y, axis=0).repeat(zoom_x, axis=1)
    Image.fromarray(np.ascontiguousarray(image_hwc)).save(folder / name)
    return name


def _psnr_plot(folder: Path, name: str, seq: SequenceVisuals, names: dict[str, str]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=100)
    for label in seq.labels:
        values = seq.scores.frames[label]["y_psnr"]
        ax.plot(range(len(values)), values, marker="o" if len(values) <= 30 else None, markersize=3,
                label=names[label])
    ax.set_xlabel("frame")
    ax.set_ylabel("Y-PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(folder / name)
    plt.close(fig)
    return name


def _format(value: float | None, metric: str) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:.{decimals(metric)}f}"


def _table_html(summary: list[dict], names: dict[str, str]) -> str:
    labels = list(names)
    head1 = "".join(f'<th colspan="{len(ALL_METRICS)}">{html.escape(names[label])}</th>' for label in labels)
    head2 = "".join(f"<th>{HEADINGS[m]}</th>" for _ in labels for m in ALL_METRICS)
    body = []
    for row in summary:
        best = {m: best_label(row["streams"], m) for m in ALL_METRICS}
        cells = "".join(
            f'<td class="{"best" if best[m] == label else ""}">{_format(row["streams"][label][m], m)}</td>'
            for label in labels for m in ALL_METRICS)
        cls = ' class="overall"' if row["sequence"] == "overall" else ""
        body.append(f"<tr{cls}><th>{html.escape(row['sequence'])}</th><td>{row['frames']}</td>{cells}</tr>")
    return (f'<table class="scores"><thead><tr><th rowspan="2">sequence</th><th rowspan="2">frames</th>{head1}</tr>'
            f"<tr>{head2}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _img(src: str, alt: str, cls: str = "") -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{f" class={cls!r}" if cls else ""}>'


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
table.scores { border-collapse: collapse; font-size: 13px; }
table.scores th, table.scores td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.scores thead th { text-align: center; }
table.scores td.best { font-weight: bold; background: #e3f2e1; }
table.scores tr.overall { border-top: 2px solid #444; }
section { margin-top: 2em; }
table.crops td { padding: 2px; text-align: center; font-size: 12px; vertical-align: top; }
img.pixels { image-rendering: pixelated; }
figure { display: inline-block; margin: 0 8px 8px 0; font-size: 12px; text-align: center; }
figure img { display: block; max-width: 100%; }
p.note { font-size: 13px; color: #555; max-width: 60em; }
"""


def write_report(folder: Path, collector: ReportCollector, summary: list[dict], names: dict[str, str],
                 title: str) -> Path:
    """DIR/index.html and its images (DIR checked by `check_report_folder` before the work); returns the
    page's path. The page is written last, atomically, so an interrupted report has no page that points
    at missing images."""
    folder.mkdir(parents=True, exist_ok=True)
    shown = [*names, GT]
    shown_names = {**names, GT: GT}
    sections = []
    for i, seq in enumerate(collector.sequences):
        prefix = f"seq{i:03d}"
        plot = _psnr_plot(folder, f"{prefix}_psnr.png", seq, names)
        header = "".join(f"<th>{html.escape(shown_names[s])}</th>" for s in shown)
        rows = []
        for frame_index, crops in seq.crops:
            cells = "".join(
                f"<td>{_img(_save_png(folder, f'{prefix}_crop_f{frame_index:05d}_{k}.png', crops[s], CROP_ZOOM, CROP_ZOOM), f'{shown_names[s]}, frame {frame_index}', 'pixels')}</td>"
                for k, s in enumerate(shown))
            rows.append(f"<tr><th>frame {frame_index}</th>{cells}</tr>")
        top, left, size = seq.crop_box
        n = len(seq.profiles[GT])
        repeat = max(1, min(8, -(-PROFILE_MIN_HEIGHT // n)))
        widen = 2 if seq.profiles[GT][0].shape[0] < 400 else 1  # narrow frames: pixels wide enough to see
        profiles = "".join(
            f"<figure>{_img(_save_png(folder, f'{prefix}_profile_{k}.png', np.stack(seq.profiles[s]), repeat, widen), f'temporal profile, {shown_names[s]}', 'pixels')}"
            f"<figcaption>{html.escape(shown_names[s])}</figcaption></figure>"
            for k, s in enumerate([GT, *names]))
        sections.append(
            f"<section><h2>{html.escape(seq.name)}</h2>"
            f"<h3>Y-PSNR per frame</h3>{_img(plot, f'Y-PSNR per frame of {seq.name}')}"
            f"<h3>Crops</h3><p class=\"note\">{size}&times;{size} output pixels at ({left}, {top}) (x, y), shown "
            f"&times;{CROP_ZOOM}: where the models differ most from bicubic, in the frames where they differ most."
            f"</p><table class=\"crops\"><tr><th></th>{header}</tr>{''.join(rows)}</table>"
            f"<h3>Temporal profiles</h3><p class=\"note\">Image row {seq.profile_row}, one line per frame from "
            f"top (frame 0) to bottom ({n} frames{f', each repeated {repeat}&times;' if repeat > 1 else ''}): "
            "straight, steady streaks mean stable detail; broken or jittering streaks are flicker.</p>"
            f"{profiles}</section>")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>evaluate: "
            f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>Evaluation report</h1><p class=\"note\">{html.escape(title)}. Models: "
            + ", ".join(f"<b>{html.escape(names[k])}</b>" for k in names if k != BICUBIC)
            + ". Best per row in bold; PSNR/SSIM higher is better, tOF and TDE (temporal: flicker the GT does not "
            "have) lower is better; overall = mean of sequence means.</p>"
            f"{_table_html(summary, names)}{''.join(sections)}</body></html>\n")
    path = folder / "index.html"
    atomic_write_text(path, page)
    return path
