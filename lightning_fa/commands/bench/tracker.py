"""The tracker: `StreamingTracker.step` per engine against the bare backbone, and `track` over a
long video (memory growth, speed at both ends)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_fa.commands.bench.harness import (
    BenchContext,
    Figures,
    Skip,
    _rss_kib,
    parameter_count,
    per_second,
    ratio,
    register,
    time_interleaved,
)

# --------------------------------------------------------------------------------------------
# tracker
# --------------------------------------------------------------------------------------------


class FixedBoxDetector:
    """A stand-in face detector that always reports one box: keeps the detector's own cost
    (and its failures on synthetic faces) out of the tracker's figures."""

    def __init__(self, box: np.ndarray, calibration: Any) -> None:
        self.box = np.asarray(box, dtype=np.float64).reshape(1, 5)
        self.calibration = calibration

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.box


@register("tracker")
def bench_tracker(ctx: BenchContext) -> Figures:
    """Frames/s of `StreamingTracker.step` per engine (one face, fixed-box detector) and its
    ratio to the bare backbone forward on one crop, interleaved frame by frame."""
    try:
        from lightning_fa.tracking.boxes import BoxCalibration
        from lightning_fa.tracking.loading import load_step
        from lightning_fa.tracking.tracker import StreamingTracker
    except ImportError as err:
        raise Skip(f"tracker not available ({err})") from err
    from lightning_fa.backbones import create_backbone

    # The figure: HRNet-W18 at 256x256 on 480p frames (smoke: the small one).
    backbone_name = ctx.pick("hrnet_lite", "hrnet_w18", "hrnet_w18")
    video_size = ctx.pick(128, 480, 480)
    frames, landmarks = random_face_video(ctx.pick(4, 32, 64), video_size)
    x1, y1 = landmarks[0].min(0)
    x2, y2 = landmarks[0].max(0)
    detector = FixedBoxDetector([x1, y1, x2, y2, 1.0], BoxCalibration(0.0, 1.0))
    workloads: dict[str, Callable[[], Any]] = {}
    figures: Figures = {"backbone": backbone_name, "frame_size": [video_size, video_size],
                        "detector": "fixed box (detection cost excluded)", "engines": {}}  # fmt: skip
    trackers = {}
    for engine in ("torch", "onnx"):
        if engine == "onnx" and ctx.is_cuda:
            figures["engines"][engine] = {"skipped": "onnx engine runs on CPU only"}
            continue
        start = time.perf_counter()
        try:
            step = load_step(None, backbone_name, engine, 68, ctx.device.type)
        except ImportError as err:
            figures["engines"][engine] = {"skipped": f"component missing: {err}"}
            continue
        # Untrained weights give low confidences: keep the track alive regardless.
        tracker = StreamingTracker(step, detector, min_confidence=0.0, device=ctx.device.type)
        trackers[engine] = tracker
        figures["engines"][engine] = {"load_s": round(time.perf_counter() - start, 2)}
        workloads[f"tracker_{engine}"] = _tracker_workload(ctx, tracker, frames)
    # The reference: the torch tracker's own backbone on the crop the tracker cuts from the
    # first frame (an untrained network's CPU speed depends on its weights and input).
    if "torch" in trackers:
        reference = trackers["torch"]
        backbone = reference.step_fn.module.backbone
        centre, side = reference._detector_crops(detector(frames[0]))[0]
        crop = torch.from_numpy(reference._crop(frames[0], centre, side)[0].copy())[None]
    else:
        backbone = create_backbone(backbone_name, 68).eval()
        crop = torch.randint(0, 256, (1, 3, *backbone.input_size), dtype=torch.uint8)
    backbone, crop = backbone.to(ctx.device), crop.to(ctx.device)

    def bare_backbone() -> None:
        with torch.inference_mode():
            backbone(backbone.preprocess(crop))

    workloads["bare_backbone"] = bare_backbone
    timings = time_interleaved(ctx, workloads, repeats=ctx.pick(2, 30, 100), warmup=2)
    figures["bare_backbone"] = {**timings["bare_backbone"],
                                "frames_per_s": per_second(1, timings["bare_backbone"])}  # fmt: skip
    for engine, tracker in trackers.items():
        timing = timings[f"tracker_{engine}"]
        figures["engines"][engine].update(
            {
                **timing,
                "frames_per_s": per_second(1, timing),
                "ratio_tracker_vs_bare_backbone": ratio(timing, timings["bare_backbone"]),
                "tracks_at_end": len(tracker.tracks),
            }
        )
    if "torch" in trackers:
        figures["engines"]["torch"]["overhead_vs_backbone_in_step"] = _in_step_overhead(
            workloads["tracker_torch"]
        )
    return figures


def _tracker_workload(ctx: BenchContext, tracker: Any, frames: list[np.ndarray]) -> Callable:
    """`tracker.step` on the frames in turn. With the torch engine it also records, per call,
    the whole step's seconds and those spent inside the backbone's forward (hooks), so that
    the overhead is measured on the very frames and weights of the step itself."""
    counter = iter(range(10**9))
    calls: list[tuple[float, float]] = []
    module = getattr(tracker.step_fn, "module", None)
    inside: list[float] = []
    if module is not None:
        starts: list[float] = []

        def before(*_: Any) -> None:
            ctx.sync()
            starts.append(time.perf_counter())

        def after(*_: Any) -> None:
            ctx.sync()
            inside.append(time.perf_counter() - starts.pop())

        module.backbone.register_forward_pre_hook(before)
        module.backbone.register_forward_hook(after)

    def run() -> None:
        inside.clear()  # drops what the hooks saw outside a step (the bare reference forward)
        start = time.perf_counter()
        tracker.step(frames[next(counter) % len(frames)])
        ctx.sync()
        calls.append((time.perf_counter() - start, sum(inside)))

    run.calls = calls  # type: ignore[attr-defined]
    return run


def _in_step_overhead(workload: Callable) -> Figures:
    """Median over steps of (step - backbone forward inside it) / backbone forward."""
    calls = [(total, inside) for total, inside in workload.calls if inside > 0]
    overhead = [(total - inside) / inside for total, inside in calls]
    return {
        "median_ratio": round(float(np.median(overhead)), 4),
        "median_overhead_ms": round(1000 * float(np.median([t - i for t, i in calls])), 3),
        "steps": len(calls),
    }


LONG_RUN_BASELINE_FRAME = 500
# An HRNet a few ms per frame on CPU, so 3,000 frames fit in the bench's time and the work a
# long run could slow down (decode, crops, filters, outputs) is a large share of each frame.
LONG_RUN_HRNET = {"stem_channels": 8, "layer1_planes": 4, "layer1_blocks": 1,
                  "widths": (4, 8, 12, 16), "stage_modules": (1, 1, 1), "blocks_per_branch": 1}  # fmt: skip
LONG_RUN_INPUT = 64


@register("tracker_long")
def bench_tracker_long(ctx: BenchContext) -> Figures:
    """`track` over a long synthetic video as the command runs it (MJPG decode, tracker, CSV and
    JSON outputs; a tiny HRNet at 64x64 under the default ConvLSTM, fixed-box detector): resident memory growth from frame 500 to
    the end and frames/s in the first and last tenth (goals: growth <= 5 %, speed within 10 %).
    The smoke tier's video is shorter than 500 frames: its baseline is a sixth of the way in."""
    import cv2

    from lightning_fa.backbones import HRNet, HRNetConfig
    from lightning_fa.inference.onnx import StreamingStep
    from lightning_fa.systems.finetune import StableAlignmentModule
    from lightning_fa.tracking.boxes import BoxCalibration
    from lightning_fa.tracking.formats import TrackOutputs
    from lightning_fa.tracking.run import track_video
    from lightning_fa.tracking.tracker import StreamingTracker
    from lightning_fa.tracking.video_io import FrameReader, open_capture

    num_frames, size = ctx.pick(60, 3000, 6000), 128
    clip, landmarks = random_face_video(50, size)
    x1, y1 = landmarks[0].min(0)
    x2, y2 = landmarks[0].max(0)
    detector = FixedBoxDetector([x1, y1, x2, y2, 1.0], BoxCalibration(0.0, 1.0))
    backbone = HRNet(68, HRNetConfig(**LONG_RUN_HRNET), input_size=(LONG_RUN_INPUT,) * 2)
    step = StreamingStep(StableAlignmentModule(backbone=backbone)).eval().to(ctx.device)
    tracker = StreamingTracker(step, detector, min_confidence=0.0, device=ctx.device.type)
    for frame in clip[:5]:  # one-time initialisation stays out of the first tenth
        tracker.step(frame)
    tracker.reset()
    # Entry time and resident set of every step; successive entries bound one whole frame
    # (decode, step, outputs).
    stamps: list[float] = []
    rss_kib: list[int | None] = []
    bare_step = tracker.step

    def recorded_step(frame: np.ndarray, timestamp: float | None = None) -> Any:
        stamps.append(time.perf_counter())
        rss_kib.append(_rss_kib("VmRSS"))
        return bare_step(frame, timestamp)

    tracker.step = recorded_step
    with tempfile.TemporaryDirectory(prefix="bench_long_") as folder:
        video = Path(folder) / "long.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size))
        cycle = clip + clip[-2:0:-1]  # back and forth: the face moves without jumps
        for k in range(num_frames):
            writer.write(np.ascontiguousarray(cycle[k % len(cycle)][..., ::-1]))
        writer.release()
        capture, _ = open_capture(str(video))
        csv_path, json_path = Path(folder) / "long.csv", Path(folder) / "long.json"
        outputs = TrackOutputs(68, csv_path, json_path, None, 25.0, (size, size))
        summary = track_video(tracker, FrameReader(capture), outputs, progress=False)
        stamps.append(
            time.perf_counter()
        )  # the end of the last frame (before the JSON is put together)
        rss_kib.append(_rss_kib("VmRSS"))
        capture.release()
        outputs.close(summary)
        output_mib = {p.name: round(p.stat().st_size / 2**20, 3) for p in (csv_path, json_path)}
    frames = len(stamps) - 1
    tenth = max(frames // 10, 1)
    by_tenth = [
        tenth / (stamps[k + tenth] - stamps[k]) for k in range(0, frames - tenth + 1, tenth)
    ]
    first_fps, last_fps = by_tenth[0], tenth / (stamps[-1] - stamps[-1 - tenth])
    # Medians of single frames: a second-long stall of a shared machine moves a tenth's
    # frames/s but not its median frame.
    frame_ms = 1e3 * np.diff(stamps)
    first_ms, last_ms = np.median(frame_ms[:tenth]), np.median(frame_ms[-tenth:])
    baseline = min(LONG_RUN_BASELINE_FRAME, frames // 6)
    figures: Figures = {
        "backbone": f"tiny HRNet {LONG_RUN_INPUT}x{LONG_RUN_INPUT} ({parameter_count(backbone)} parameters)",
        "frame_size": [size, size],
        "frames": frames,
        "outputs_mib": output_mib,
        "fps_first_tenth": round(first_fps, 2),
        "fps_last_tenth": round(last_fps, 2),
        "speed_change_pct": round(100 * (last_fps / first_fps - 1), 2),
        "fps_by_tenth": [round(fps, 1) for fps in by_tenth],
        "median_frame_ms_first_tenth": round(float(first_ms), 3),
        "median_frame_ms_last_tenth": round(float(last_ms), 3),
        "median_frame_change_pct": round(100 * (last_ms / first_ms - 1), 2),
        "rss_baseline_frame": baseline,
    }
    if rss_kib[baseline] is not None:
        start_kib, end_kib = rss_kib[baseline], rss_kib[-1]
        figures.update(
            {
                "rss_mib_at_baseline": round(start_kib / 1024, 2),
                "rss_mib_at_end": round(end_kib / 1024, 2),
                "rss_growth_pct": round(100 * (end_kib / start_kib - 1), 2),
            }
        )
    return figures


def random_face_video(num_frames: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (H, W, 3) RGB uint8 and (T, 68, 2) landmarks of a synthetic talking face."""
    from data_modules.synthetic import SyntheticFaceVideos

    clip = SyntheticFaceVideos(1, num_frames, image_size=size).clip(0)
    frames = [np.ascontiguousarray(f.permute(1, 2, 0).numpy()) for f in clip["frames"]]
    return frames, clip["landmarks"].numpy()
