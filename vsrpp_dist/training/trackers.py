"""The experiment trackers beyond TensorBoard (W&B, MLflow, and the others Accelerate speaks to), owned by
the Observer and called by it alone, on rank 0.

Each tracker is one of Accelerate's own classes (accelerate.tracking, looked up by the names `log_with`
takes), so every service is spoken to by the library made for it. They are started and called here
rather than through `Accelerator.init_trackers`/`Accelerator.log`, which call the trackers in a row and
let the first one that raises stop the others and the training step: here each tracker's every call is
guarded on its own, because a tracker is a convenience that must never cost the run.

- A tracker that raises (unreachable server, refused credentials, a library fault) is reported in one
  line and dropped for the rest of the run; TensorBoard, the other trackers and the checkpoints go on.
  It is dropped, not retried: the libraries already retry network faults before they raise (MLflow's
  HTTP retries, W&B's background uploader), so retrying here would only spend step time on a service
  that stays down. `--resume` starts it again and continues the same tracker run.
- A tracker named but not installed is refused before the run directory exists (`require_installed`),
  naming the extra to install.
- Resume continues the same tracker run: the run ids are kept in RUN/trackers.json (MLflow's run id,
  W&B's run id with resume="allow").
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import numpy as np
import torch

from ..config import Config, LogConfig, config_to_dict
from ..data.locations import describe_error
from ..masking import mask
from ..errors import ConfigError
from ..files import atomic_write_text

IDS_NAME = "trackers.json"  # in the run directory: each tracker's run id, for resume
TENSORBOARD = "tensorboard"  # the Observer's own writer (see observer.py), not one of these
# pip extras of this package (pyproject.toml), by Accelerate's tracker name
EXTRAS = {"wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml", "aim": "aim", "clearml": "clearml",
          "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}


def require_installed(names: tuple[str, ...]) -> None:
    """Refuse, in one line, a tracker whose library is missing (Accelerate would skip it silently)."""
    import accelerate
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name == TENSORBOARD:
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"log.trackers: {name} is not known to Accelerate {accelerate.__version__}; "
                              "pip install -U accelerate")
        if name not in available:
            raise ConfigError(f"log.trackers: {name} is not installed; pip install 'vsrpp-dist[{EXTRAS[name]}]'")


def tracker_params(cfg: Config) -> dict[str, int | float | str | bool]:
    """The resolved config as the run's parameters, one per `section.key`: the values trackers take (int,
    float, str, bool; lists become their text) with every text masked as messages are, so a credential in
    a location or a tracking URI never reaches a service."""
    params: dict[str, int | float | str | bool] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            elif isinstance(value, (list, tuple)):
                params[prefix + key] = mask("[" + ", ".join(map(str, value)) + "]")
            elif isinstance(value, str):
                params[prefix + key] = mask(value)
            elif value is None:
                params[prefix + key] = "null"
            else:
                params[prefix + key] = value

    walk("", config_to_dict(cfg))
    return params


def image_hwc_uint8(image_chw: torch.Tensor) -> np.ndarray:
    """A [0, 1] CHW image as the trackers' image loggers take it: HWC, 8-bit."""
    return image_chw.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class Trackers:
    """The run's trackers other than TensorBoard; on rank 0 only (the Observer builds none elsewhere)."""

    def __init__(self, log_cfg: LogConfig, run_dir: Path, report: Callable[[str], None],
                 inform: Callable[[str], None] = lambda line: None) -> None:
        self.log_cfg = log_cfg
        self.run_dir = run_dir
        self.report = report  # one error line per tracker that fails
        self.inform = inform  # where each tracker's run is
        self.names = [name for name in log_cfg.trackers if name != TENSORBOARD]
        self.active: dict[str, Any] = {}  # name -> started Accelerate tracker
        self.dropped: set[str] = set()  # failed and left out for the rest of the run
        self.seconds: dict[str, float] = {name: 0.0 for name in self.names}  # spent logging to each (benchmarks)

    # -- start ---------------------------------------------------------------------------------------

    def start(self, params: Mapping[str, Any], *, resume: bool) -> None:
        """Start every tracker and give it the run's parameters; continue the saved tracker runs on resume."""
        if not self.names:
            return
        from accelerate import PartialState

        PartialState()  # Accelerate's trackers log through its logger, which needs the state
        saved = self._saved_ids() if resume else {}
        for name in self.names:
            tracker = self._guarded(name, "starting", lambda: self._start_one(name, saved.get(name)))
            if tracker is None:
                continue
            self.active[name] = tracker
            self._guarded(name, "recording the config", lambda: self._store_params(name, tracker, params))
        ids = self._save_ids(saved)
        for name, tracker in self.active.items():
            how = "continued" if name in saved and saved[name] == ids.get(name) else "started"
            self.inform(f"tracker {name}: run {ids.get(name, '(no id)')} {how}{self._where(name, tracker)}")

    def _start_one(self, name: str, run_id: str | None):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        cls = LOGGER_TYPE_TO_CLASS[name]
        cfg, run_name = self.log_cfg, self.log_cfg.run_name or self.run_dir.name
        if name == "wandb":
            kwargs: dict[str, Any] = {"name": run_name, "dir": str(self.run_dir)}
            if run_id:
                kwargs.update(id=run_id, resume="allow")
            if cfg.wandb_entity:
                kwargs["entity"] = cfg.wandb_entity
            if cfg.wandb_offline:
                kwargs["mode"] = "offline"
            tracker = cls(cfg.project, **kwargs)
        elif name == "mlflow":
            import mlflow

            uri = cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (self.run_dir / "mlruns").as_uri()
            if urlparse(uri).scheme in ("", "file"):
                # MLflow 3 keeps its file store only on request; a local store is what was asked for here
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(uri)
            tracker = cls(cfg.project, run_id=run_id, run_name=run_name, tags={"vsrpp.run_dir": str(self.run_dir)})
        elif cls.requires_logging_directory:
            tracker = cls(cfg.project, str(self.run_dir))
        else:
            tracker = cls(cfg.project)
        tracker.start()
        return tracker

    @staticmethod
    def _where(name: str, tracker) -> str:
        if name == "mlflow":
            import mlflow

            return f" at {mask(mlflow.get_tracking_uri())}"
        if name == "wandb" and getattr(getattr(tracker.tracker, "settings", None), "_offline", False):
            return " offline (`wandb sync` uploads it)"
        return ""

    def _store_params(self, name: str, tracker, params: Mapping[str, Any]) -> None:
        if name == "mlflow":
            # MLflow's parameters are fixed once logged: a resumed run keeps the first values of those the
            # new config changed (RUN/config.yaml and the log have the new ones) and adds the rest.
            logged = dict(tracker.tracker.data.params)
            changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))
            if changed:
                self.report(f"mlflow: parameters are fixed once logged; the run keeps the first values of "
                            f"{', '.join(changed)} (the new ones are in {self.run_dir / 'config.yaml'})")
            params = {k: v for k, v in params.items() if k not in logged}
        if params:
            tracker.store_init_configuration(dict(params))

    def _saved_ids(self) -> dict[str, str]:
        try:
            return json.loads((self.run_dir / IDS_NAME).read_text())
        except (OSError, ValueError):
            return {}  # a run started before this file existed: its trackers start new runs

    def _save_ids(self, ids: dict[str, str]) -> dict[str, str]:
        """The started trackers' run ids over `ids` (a tracker that failed this time keeps its saved id)."""
        ids = dict(ids)
        for name, tracker in self.active.items():
            run = tracker.tracker
            run_id = getattr(getattr(run, "info", None), "run_id", None) or getattr(run, "id", None)
            if isinstance(run_id, str):
                ids[name] = run_id
        try:
            atomic_write_text(self.run_dir / IDS_NAME, json.dumps(ids, indent=1) + "\n")
        except OSError as err:
            self.report(f"cannot write {self.run_dir / IDS_NAME} ({err}); a resumed run will start new tracker runs")
        return ids

    # -- during the run --------------------------------------------------------------------------------

    def log(self, step: int, values: Mapping[str, float]) -> None:
        if not self.active:
            return
        values = {tag: float(value) for tag, value in values.items()}
        for name, tracker in list(self.active.items()):
            started = time.perf_counter()
            self._guarded(name, "logging", lambda: tracker.log(values, step=step))
            self.seconds[name] += time.perf_counter() - started

    def log_image(self, step: int, tag: str, image_chw: torch.Tensor) -> None:
        """To the trackers whose Accelerate class takes images (W&B, Aim, ClearML, SwanLab; not MLflow)."""
        takers = {n: t for n, t in self.active.items() if hasattr(t, "log_images")}
        if not takers:
            return
        image = image_hwc_uint8(image_chw)
        for name, tracker in takers.items():
            started = time.perf_counter()
            self._guarded(name, "logging an image", lambda: tracker.log_images({tag: [image]}, step=step))
            self.seconds[name] += time.perf_counter() - started

    def finish(self) -> None:
        for name, tracker in list(self.active.items()):
            self._guarded(name, "finishing", tracker.finish)
        self.active.clear()

    def _guarded(self, name: str, doing: str, call: Callable[[], Any]) -> Any:
        """`call`; if it raises, one line and the tracker is dropped (see the module's doc)."""
        try:
            return call()
        except Exception as err:
            self.active.pop(name, None)
            self.dropped.add(name)
            self.report(f"tracker {name} failed while {doing} ({describe_error(err)}); training goes on without it "
                        "for the rest of this run (--resume starts it again)")
            return None
