"""Several outputs of one sequence scored side by side: bicubic and each model, per frame and per pair
of frames, summarised per sequence and overall, as a table and as JSON.

A "stream" is one output of the same input frames: `bicubic` and one per checkpoint, named by a
label (`model` when there is one checkpoint, else a short name taken from its path). Per frame a
stream gets PSNR/SSIM on Y and RGB; per pair of consecutive frames tOF and TDE
(vsrpp_dist/temporal_metrics.py), with the GT's flow and Y change computed once for all streams.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..metrics import mean_of_sequence_means
from ..temporal_metrics import GroundTruthTrack, TemporalTrack
from ..errors import InferenceError

FRAME_METRICS = ("y_psnr", "y_ssim", "rgb_psnr", "rgb_ssim")  # the order validation.score returns them in
PAIR_METRICS = ("tof", "tde")
ALL_METRICS = FRAME_METRICS + PAIR_METRICS
LOWER_IS_BETTER = frozenset(PAIR_METRICS)
BICUBIC = "bicubic"
HEADINGS = {"y_psnr": "Y-PSNR", "y_ssim": "Y-SSIM", "rgb_psnr": "RGB-PSNR", "rgb_ssim": "RGB-SSIM", "tof": "tOF",
            "tde": "TDE"}


def add_checkpoints_argument(parser) -> None:
    """evaluate's --checkpoint: one or several, each scored on the same input."""
    parser.add_argument("--checkpoint", required=True, action="append", metavar="C",
                        help="a checkpoint folder, a symlink to one (RUN/checkpoint_best, RUN/checkpoint_latest) "
                             "or its exported weights file; repeat it to compare several models on the same input "
                             "in one pass")


def model_labels(sources: list[str]) -> list[str]:
    """Column names for the checkpoints: `model` for one; else the shortest tail of each path that tells
    them apart (`runA/checkpoint_best`, `step_1000`, ...). The same checkpoint twice is refused."""
    if len(sources) == 1:
        return ["model"]
    real = [os.path.realpath(s) for s in sources]
    for i, r in enumerate(real):
        if r in real[:i]:
            raise InferenceError(f"--checkpoint {sources[i]}: given twice (as {sources[real.index(r)]})")
    parts = [[p for p in Path(s).parts if p not in ("weights.pt", "model.safetensors")] or [s] for s in sources]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) and BICUBIC not in labels:
            return labels
    return [f"model{i + 1}" for i in range(len(sources))]


@dataclass
class SequenceScores:
    """One sequence's scores: per stream, per-frame values of each metric and the pairs' tOF/TDE."""

    labels: list[str]  # the streams' keys: bicubic first, then the models
    crop_border: int
    frames: dict[str, dict[str, list[float]]] = field(init=False)
    gt_track: GroundTruthTrack = field(init=False)
    tracks: dict[str, TemporalTrack] = field(init=False)

    def __post_init__(self) -> None:
        self.frames = {label: {m: [] for m in FRAME_METRICS} for label in self.labels}
        self.gt_track = GroundTruthTrack(self.crop_border)
        self.tracks = {label: TemporalTrack(self.crop_border) for label in self.labels}

    def add_frame(self, gt_chw_u8: torch.Tensor, outputs_chw_u8: dict[str, torch.Tensor],
                  frame_scores: dict[str, list[float]]) -> None:
        """The next frame in order: its 8-bit GT and outputs (CPU) and each stream's 4 frame metrics."""
        self.gt_track.step(gt_chw_u8)
        for label in self.labels:
            for metric, value in zip(FRAME_METRICS, frame_scores[label]):
                self.frames[label][metric].append(value)
            self.tracks[label].step(outputs_chw_u8[label], self.gt_track)

    @property
    def num_frames(self) -> int:
        return len(self.frames[self.labels[0]]["y_psnr"])

    def per_frame(self, label: str) -> dict[str, list[float]]:
        """Every value of one stream: frame metrics per frame, tof/tde per pair (i: frames i and i+1)."""
        track = self.tracks[label]
        return {**self.frames[label], "tof": list(track.tof), "tde": list(track.tde)}

    def mean(self, label: str, metric: str) -> float | None:
        values = self.per_frame(label)[metric]
        return sum(values) / len(values) if values else None


def summarise(per_sequence: dict[str, SequenceScores], labels: list[str]) -> list[dict]:
    """One row per sequence and 'overall' (the mean of sequence means; tOF/TDE over the sequences that
    have at least two frames, None when none has): {"sequence", "frames", "streams": {label: {metric}}}."""
    rows = []
    for name, scores in per_sequence.items():
        rows.append({"sequence": name, "frames": scores.num_frames,
                     "streams": {label: {m: scores.mean(label, m) for m in ALL_METRICS} for label in labels}})
    overall = {"sequence": "overall", "frames": sum(r["frames"] for r in rows), "streams": {}}
    for label in labels:
        overall["streams"][label] = {}
        for metric in ALL_METRICS:
            values = {name: s.per_frame(label)[metric] for name, s in per_sequence.items() if s.per_frame(label)[metric]}
            overall["streams"][label][metric] = mean_of_sequence_means(values) if values else None
    return rows + [overall]


def best_label(streams: dict[str, dict], metric: str) -> str | None:
    """Which stream scores best on `metric` (ties: the first); None where no stream has a value."""
    scored = [(label, s[metric]) for label, s in streams.items() if s[metric] is not None]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda item: item[1])[0]


def decimals(metric: str) -> int:
    """Digits a metric is shown with (tables, the report): SSIM and the temporal errors 4, PSNR 3."""
    return 4 if metric.endswith("ssim") or metric in LOWER_IS_BETTER else 3


def _cell(value: float | None, metric: str, best: bool) -> str:
    if value is None:
        return f"{'-':>8} "
    return f"{value:8.{decimals(metric)}f}{'*' if best else ' '}"


def format_streams_table(rows: list[dict], names: dict[str, str]) -> str:
    """One column group per stream (bicubic, then each model: `names` maps their keys to the headings), a
    column per metric; `*` marks the best stream of each metric in each row."""
    labels = list(names)
    width = max(12, *(len(r["sequence"]) for r in rows))
    group = 9 * len(ALL_METRICS) - 1
    head1 = f"{'':{width}} {'':>6} " + " | ".join(f"{names[label][-group:]:^{group}}" for label in labels)
    head2 = f"{'sequence':{width}} {'frames':>6} " + " | ".join(
        "".join(f"{HEADINGS[m]:>8} " for m in ALL_METRICS) for _ in labels)
    lines = [head1, head2, "-" * len(head2)]
    for r in rows:
        if r["sequence"] == "overall":
            lines.append("-" * len(head2))
        best = {m: best_label(r["streams"], m) for m in ALL_METRICS}
        cells = " | ".join("".join(_cell(r["streams"][label][m], m, best[m] == label) for m in ALL_METRICS)
                           for label in labels)
        lines.append(f"{r['sequence']:{width}} {r['frames']:>6} {cells}")
    lines.append("* best in its row; PSNR/SSIM higher is better, tOF/TDE lower; overall = mean of sequence means")
    return "\n".join(lines)


def stream_keys(num_models: int) -> list[str]:
    """The JSON's name of each model: `model` for one checkpoint (the keys of earlier versions), else
    `model1`, `model2`, ... in --checkpoint order (the report's `models` list maps them to checkpoints)."""
    return ["model"] if num_models == 1 else [f"model{i + 1}" for i in range(num_models)]


def json_rows(rows: list[dict]) -> list[dict]:
    """The rows as the JSON holds them, flat: `<metric>_<stream>` for bicubic and each model key, and
    `best_<metric>`, the key of the best stream in that row."""
    out = []
    for r in rows:
        row = {"sequence": r["sequence"], "frames": r["frames"]}
        for key, metrics in r["streams"].items():
            row.update({f"{m}_{key}": metrics[m] for m in ALL_METRICS})
        row.update({f"best_{m}": best_label(r["streams"], m) for m in ALL_METRICS})
        out.append(row)
    return out


def json_per_frame(per_sequence: dict[str, SequenceScores]) -> dict[str, dict]:
    """{sequence: {stream: {metric: [values]}}}: frame metrics per frame, tof/tde per consecutive pair."""
    return {name: {label: s.per_frame(label) for label in s.labels} for name, s in per_sequence.items()}
