"""Stability on unlabelled video (DDD-style protocol): `lightning-fa evaluate-video VIDEO... --out DIR`.

Every video is tracked once (one face, `StreamingTracker`); the backbone's raw track is then
compared with the classical filters run on it (One Euro tuned and MediaPipe presets, constant-
velocity Kalman), with the model's own output ("ours": the checkpoint's stage; with the dlib
backbone and no checkpoint the shipped stage, otherwise identical to raw) and with the offline
zero-phase smoothed raw track (the reference: no lag, no jitter). Per method: MCV (%), MAV
(px^2), Accel (px), the mean distance to the offline track (px) and the lag (frames of delay that
maximise the cross-correlation of the method's velocity with the offline track's, searched over
-5..5; positive = behind). The tracker and the streaming filters run on the container's
timestamps (variable-frame-rate video keeps its timing); the offline reference and the metrics
count frames, as evenly spaced at the nominal rate. Writes `metrics.json` and `report.md`
(atomically: an earlier result is replaced only by a complete new one; all are locked against a
second run writing the same folder), and `tracks.npz` with every method's track per video.
Each video also gets the frontier: every classical filter setting (`metrics.frontier`) run on
the same raw track, and the verdict line for ours: deviation x Accel at lag <= max(ours, 1).

Results are keyed by the video's file name; videos that share a name (`a/clip.mp4`,
`b/clip.mp4`) are keyed by as many trailing path parts as tell them apart. The same file given
twice is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from lightning_fa.checks import check_ints
from lightning_fa.metrics import frontier
from lightning_fa.metrics.tracks import stability_metrics
from lightning_fa.outputs import atomic_write, claim_outputs, write_text_atomic
from lightning_fa.temporal.filters import apply_filter, make_filter, zero_phase_smooth
from lightning_fa.tracking.detectors import make_detector
from lightning_fa.tracking.loading import load_step
from lightning_fa.tracking.options import add_model_options, check_device
from lightning_fa.tracking.shipped import default_stage
from lightning_fa.tracking.tracker import StreamingTracker, face_scale
from lightning_fa.tracking.video_io import FrameReader, capture_fps, open_capture

DEFAULT_CUTOFF_HZ = 3.0
MAX_LAG = 5
METRICS = ("mcv", "mav", "accel", "deviation", "lag")


def longest_run(present: np.ndarray) -> slice:
    """The longest run of consecutive True frames (the filters and metrics need a gap-free
    track)."""
    best, start = (0, 0), None
    for t, ok in enumerate([*present.tolist(), False]):
        if ok and start is None:
            start = t
        elif not ok and start is not None:
            best = max(best, (t - start, start))
            start = None
    length, first = best
    return slice(first, first + length)


def track_one_face(
    tracker: StreamingTracker, path: str, max_frames: int | None = None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Raw and model (T, L, 2) frame-pixel tracks of the first tracked face (NaN where none),
    the frames' container timestamps (T,) in seconds (variable frame rates kept) and the
    video's nominal frame rate."""
    from tqdm import tqdm

    capture, _ = open_capture(path)
    try:
        reader = FrameReader(capture, max_frames)
        tracker.fps = reader.fps
        tracker.reset()
        raw, ours, times = [], [], []
        nan = np.full((tracker.step_fn.num_landmarks, 2), np.nan)
        timed = tqdm(
            reader.timed(),
            total=reader.expected_frames,
            unit="frame",
            desc=Path(path).name,
            disable=not progress,
        )
        for _, t, frame in timed:
            results = tracker.step(frame, t)
            raw.append(results[0].raw if results else nan)
            ours.append(results[0].stabilised if results else nan)
            times.append(t)
    finally:
        capture.release()
    if not raw:
        raise ValueError(f"{path}: no decodable frame")
    return np.stack(raw), np.stack(ours), np.array(times), reader.fps


def video_keys(videos: list[str]) -> list[str]:
    """Unique result names: the file name, or as many trailing path parts as tell videos with
    the same file name apart (`a/clip.mp4`, `b/clip.mp4`). The same file twice is refused."""
    resolved = [Path(v).resolve() for v in videos]
    for k, path in enumerate(resolved):
        if path in resolved[:k]:
            raise ValueError(f"video {videos[k]} is given twice")
    keys = []
    for path in resolved:
        depth = 1
        while any(
            other != path and other.parts[-depth:] == path.parts[-depth:] for other in resolved
        ):
            depth += 1
        keys.append("/".join(path.parts[-depth:]))
    return keys


def evaluate_tracks(
    raw: np.ndarray,
    ours: np.ndarray,
    fps: float,
    cutoff_hz: float = DEFAULT_CUTOFF_HZ,
    timestamps: np.ndarray | None = None,
) -> dict[str, Any]:
    """All methods' metrics for one video's raw and model tracks (T, L, 2).

    The streaming filters run on `timestamps` (T,) in seconds when given, else on frames
    `1 / fps` apart. The offline reference (a Butterworth filtfilt) and the metrics count in
    frames: they take the frames as evenly spaced at `fps`."""
    run = longest_run(np.isfinite(raw).all(axis=(1, 2)) & np.isfinite(ours).all(axis=(1, 2)))
    raw, ours = raw[run], ours[run]
    times = None if timestamps is None else timestamps[run]
    if len(raw) == 0:
        raise ValueError("no face was found in any frame")
    if len(raw) < 3:
        raise ValueError(f"a face was tracked in only {len(raw)} consecutive frames (need >= 3)")
    offline = zero_phase_smooth(raw, cutoff_hz, fps)
    iod = np.array([face_scale(p) for p in raw])
    box = np.array([np.ptp(p, axis=0).mean() for p in raw])  # MediaPipe's (w + h) / 2
    tracks = {
        "raw": raw,
        "one-euro": apply_filter(make_filter("one-euro", freq=fps), raw, iod, times),
        "one-euro-mediapipe": apply_filter(
            make_filter("one-euro-mediapipe", freq=fps), raw, box, times
        ),
        "kalman": apply_filter(make_filter("kalman", freq=fps), raw, timestamps=times),
        "ours": ours,
        "offline": offline,
    }
    methods = {name: stability_metrics(track, offline, MAX_LAG) for name, track in tracks.items()}
    # Every classical setting on the same raw track, at the real frame times.
    points = frontier.sweep(
        raw[None],
        lambda smoothed: stability_metrics(smoothed[0], offline, MAX_LAG),
        timestamps=np.arange(len(raw)) / fps if times is None else times,
    )
    ours_metrics = methods["ours"]
    return {
        "frames": len(raw),
        "first_frame": run.start,
        "methods": methods,
        "frontier": {
            "verdict": frontier.verdict(ours_metrics, points, "deviation", "accel"),
            "dominated": bool(frontier.dominating(ours_metrics, points, "deviation", "accel")),
            "frontier": [
                {"setting": frontier.setting_name(p), **p}
                for p in frontier.frontier(points, "deviation", "accel")
            ],
            "settings": len(points),
        },
        "tracks": tracks,
    }


def mean_over_videos(per_video: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    methods = next(iter(per_video.values()))["methods"]
    return {
        name: {
            metric: float(np.mean([v["methods"][name][metric] for v in per_video.values()]))
            for metric in METRICS
        }
        for name in methods
    }


def markdown_report(results: dict[str, Any]) -> str:
    header = "| method | MCV (%) | MAV (px^2) | Accel (px) | deviation (px) | lag (frames) |"
    rule = "|---|---|---|---|---|---|"

    def table(methods: dict[str, dict[str, float]]) -> list[str]:
        return [header, rule] + [
            f"| {name} | {m['mcv']:.3f} | {m['mav']:.3f} | {m['accel']:.3f} | "
            f"{m['deviation']:.3f} | {m['lag']:g} |"
            for name, m in methods.items()
        ]

    lines = [
        "# Stability on unlabelled video",
        "",
        f"Model: {results['model']}. Offline reference: zero-phase Butterworth low-pass of the raw "
        f"track at {results['cutoff_hz']} Hz. Lag: delay maximising the velocity "
        f"cross-correlation with the offline track (+ = behind).",
        "",
        f"## Mean over {len(results['videos'])} video(s)",
        "",
        *table(results["mean"]),
    ]
    for name, video in results["videos"].items():
        lines += ["", f"## {name} ({video['frames']} frames)", "", *table(video["methods"])]
        if "frontier" in video:
            lines += ["", f"ours against the swept filters: {video['frontier']['verdict']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-fa evaluate-video", description=__doc__)
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_model_options(parser)
    parser.add_argument("--cutoff-hz", type=float, default=DEFAULT_CUTOFF_HZ)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    check_ints(need=">= 1", none_allowed=True, **{"--max-frames": args.max_frames})
    if not args.cutoff_hz > 0 or not np.isfinite(args.cutoff_hz):
        raise ValueError(f"--cutoff-hz must be a positive number, got {args.cutoff_hz}")
    check_device(args.device)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; it must be a folder")
    metrics_path, report_path = args.out / "metrics.json", args.out / "report.md"
    tracks_path = args.out / "tracks.npz"
    outputs = [(metrics_path, "--out"), (report_path, "--out"), (tracks_path, "--out")]
    with claim_outputs(outputs):
        keys = video_keys(args.videos)
        for video in args.videos:  # every video readable, and the cutoff below its Nyquist rate
            capture, _ = open_capture(video)
            fps = capture_fps(capture)
            capture.release()
            if args.cutoff_hz >= fps / 2:
                raise ValueError(
                    f"--cutoff-hz {args.cutoff_hz} must be below half the frame rate of {video} "
                    f"({fps:g} frames/s)"
                )
        step = load_step(
            args.checkpoint, args.backbone, args.engine, args.num_landmarks, device=args.device
        )
        tracker = StreamingTracker(step, make_detector(args.detector), device=args.device)
        per_video = {}
        for key, video in zip(keys, args.videos):
            raw, ours, times, fps = track_one_face(
                tracker, video, args.max_frames, progress=not args.no_progress
            )
            try:
                per_video[key] = evaluate_tracks(raw, ours, fps, args.cutoff_hz, times)
            except ValueError as error:  # e.g. no face in the video: say which video
                raise ValueError(f"{video}: {error}") from error
        stage_file = default_stage(args.checkpoint, args.backbone)
        if args.checkpoint:
            model = str(args.checkpoint)
        elif stage_file is not None:
            model = f"shipped dlib stage ({stage_file.name})"
        else:
            model = f"{args.backbone} (untrained temporal stage)"
        # Every method's track of every video, frame pixels: "<video key>/<method>" (T, L, 2).
        arrays = {
            f"{key}/{method}": track.astype(np.float32)
            for key, video in per_video.items()
            for method, track in video.pop("tracks").items()
        }
        results = {
            "model": model,
            "cutoff_hz": args.cutoff_hz,
            "max_lag": MAX_LAG,
            "mean": mean_over_videos(per_video),
            "videos": per_video,
        }
        report = markdown_report(results)
        with atomic_write(tracks_path, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        write_text_atomic(metrics_path, json.dumps(results, indent=2))
        write_text_atomic(report_path, report)
    print(report)
    return 0
