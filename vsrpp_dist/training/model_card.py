"""MODEL_CARD.md beside the best and the final checkpoint: what a person receiving the weights needs to
know, in the Hugging Face model-card form (YAML front matter, then Markdown), written from what the run
itself recorded: the architecture from the config, the data from the shard manifests, the degradation,
the steps, the last validation and the chain of models the run started from.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..config import SCALE, Config


def data_summary(manifest: dict | None) -> dict | None:
    """What a card says about a packed data set, from its manifest (None: no such set)."""
    if not manifest:
        return None
    totals = manifest.get("totals") or {}
    sources = [f"{s.get('path')} ({s.get('kind')}, {s.get('sequences')} sequences)"
               for s in manifest.get("sources") or [] if isinstance(s, dict)]
    return {"location": manifest.get("_folder"), "sequences": totals.get("sequences"), "frames": totals.get("frames"),
            "samples": totals.get("samples"), "codec": manifest.get("codec"),
            "real_lr": bool(manifest.get("has_lr")), "sources": sources, "packed": manifest.get("created")}


def render(cfg: Config, *, step: int, parameters: int, ema: bool, provenance: list[dict], train_data: dict | None,
           val_data: dict | None, validation: dict | None, run_dir: str) -> str:
    m = cfg.model
    # shards packed with real LR are the input as they are (data.degradation.for_training)
    real_lr = bool(train_data and train_data["real_lr"])
    front: dict[str, Any] = {
        "library_name": "vsrpp-dist",
        "tags": ["video-super-resolution", "super-resolution", f"x{SCALE}", f"alignment-{m.alignment}",
                 "real-lr-pairs" if real_lr else f"degradation-{cfg.degradation.kind}"],
        "pipeline_tag": "image-to-image",
    }
    if provenance:
        front["base_model"] = provenance[0].get("from")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {m.name} x{SCALE}: {run_dir}, step {step}", "",
             f"A x{SCALE} video super-resolution model: each output frame is restored from the {m.num_frames} "
             f"low-resolution frames around it, propagated in both directions from the centre frame. "
             f"Trained with vsrpp-dist; the weights are `model.safetensors` in this folder "
             f"({'the EMA of the weights' if ema else 'the trained weights'}, fp32).", "",
             "## Architecture", "",
             f"- {parameters:,} parameters; channels {m.channels}, blocks {m.extract_blocks} (extract) / "
             f"{m.propagation_blocks} (propagation) / {m.reconstruction_blocks} (reconstruction), "
             f"upsampling channels {m.upsample_channels}",
             f"- alignment: {m.alignment}" + (f" (flow network {m.flow_channels} channels, {m.flow_levels} levels, "
                                              f"flows up to {m.max_flow:g} LR px)" if m.explicit_alignment else ""),
             "- the full architecture is the `model_config` in the weights file's metadata; "
             "`vsrpp upscale --checkpoint THIS_FOLDER` builds it", "",
             "## Training", "",
             f"- steps: {step} of {cfg.train.total_steps}; {cfg.data.batch_size_per_gpu} clips per GPU, LR patches "
             f"{cfg.data.lr_patch_size}x{cfg.data.lr_patch_size}; peak learning rate {cfg.optim.lr_peak:g}, "
             f"warm-up {cfg.optim.warmup_steps} steps; seed {cfg.run.seed}",
             "- input frames: the real LR frames packed with the training data" if real_lr else
             f"- degradation (how the input frames were made from the ground truth): {cfg.degradation.kind}"]
    lines += ["", "## Data", ""]
    for title, summary in (("training", train_data), ("validation", val_data)):
        if summary is None:
            lines.append(f"- {title}: none")
            continue
        lines.append(f"- {title}: {summary['location']}: {summary['sequences']} sequences, {summary['frames']} "
                     f"frames ({summary['codec']}{', real LR frames' if summary['real_lr'] else ''})")
        lines += [f"  - source: {source}" for source in summary["sources"]]
    lines += ["", "## Validation", ""]
    if validation:
        lines += ["| step | sequences | frames | PSNR (Y) | SSIM (Y) | bicubic PSNR | bicubic SSIM | gain (dB) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {validation.get('step')} | {int(validation.get('sequences', 0))} | "
                  f"{int(validation.get('frames', 0))} | {validation['KI_PSNR']:.3f} | {validation['KI_SSIM']:.4f} | "
                  f"{validation['LR_PSNR']:.3f} | {validation['LR_SSIM']:.4f} | {validation['Improvement']:+.3f} |",
                  "", f"The last validation of the run, on the validation data above (Y channel, "
                  f"{cfg.validation.crop_border} px border cropped)."]
    else:
        lines.append("No validation was run.")
    lines += ["", "## Started from", ""]
    if not provenance:
        lines.append("Random initialisation (`init.from` was not set).")
    for depth, entry in enumerate(provenance):
        config = entry.get("model_config") or {}
        lines.append(f"{depth + 1}. `{entry.get('from')}`: {entry.get('weights')} weights of step {entry.get('step')}, "
                     f"sha256 `{entry.get('sha256')}`; alignment {config.get('alignment', '?')}, channels "
                     f"{config.get('channels', '?')}; degradation {entry.get('degradation') or 'unknown'}; "
                     f"data {entry.get('train_shards') or 'unknown'}")
    return "\n".join(lines) + "\n"
