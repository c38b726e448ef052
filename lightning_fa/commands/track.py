"""Streaming face-landmark tracking on video files and cameras: `lightning-fa track INPUT`.

    lightning-fa track clip.mp4 --backbone dlib --out-csv lm.csv --out-json lm.json \
        --out-video overlay.mp4 --filter one-euro
    lightning-fa track clip.mp4 --out-coco lm.coco.json --out-openface lm.openface.csv
    lightning-fa track 0 --checkpoint finetuned.ckpt          (camera 0)
    lightning-fa track clip.mp4 --checkpoint model.onnx --engine onnx

Per frame: a face detector (OpenCV's Haar cascade or dlib's HOG detector) finds new faces and
checks the tracked ones every `--redetect-every` frames; between checks each face is cropped
around its previous landmarks (box of the landmarks, enlarged, the crop itself smoothed so that
crop jitter does not become landmark jitter). Every track carries its own temporal-stage state, reset
when a track starts; an optional classical filter runs on top. The core is `StreamingTracker`
(`step(frame) -> list[TrackResult]`), usable from Python.

Outputs are never lost: every output path is checked and locked before any work (a second run
writing the same file refuses); while the run goes, the CSVs, JSON frames and overlay video grow
in `<name>.partial.csv`, `<name>.partial.jsonl` and `<name>.partial.<ext>` beside their targets
(flushed about every second) and replace the targets only once the run completes.

Frames are timed by the container's presentation times (variable frame rates kept). The COCO
JSON follows MMPoseInferencer's video predictions (per landmark scores: each raw heatmap's peak),
the OpenFace CSV OpenFace's columns (frames from 1); the overlay (labelled raw | stabilised) is
H.264 through PyAV, or MJPG in an .avi. Formats: docs/tracking.md. A run that is
interrupted or crashes leaves the earlier outputs untouched and keeps the partial files, named on
stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2

from lightning_fa.checks import check_ints
from lightning_fa.outputs import claim_outputs
from lightning_fa.temporal.filters import FILTER_NAMES
from lightning_fa.tracking.detectors import make_detector
from lightning_fa.tracking.formats import TrackOutputs
from lightning_fa.tracking.loading import load_step
from lightning_fa.tracking.options import add_model_options, check_device, check_fraction
from lightning_fa.tracking.run import track_video
from lightning_fa.tracking.shipped import default_stage
from lightning_fa.tracking.tracker import StreamingTracker
from lightning_fa.tracking.video_io import FrameReader, capture_fps, open_capture, overlay_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-fa track",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="video file or camera index (0, 1, ...)")
    add_model_options(parser)
    parser.add_argument(
        "--allow-untrained", action="store_true",
        help="run a backbone with random weights or an untrained (identity) stage anyway",
    )  # fmt: skip
    parser.add_argument("--filter", choices=FILTER_NAMES, default="none")
    parser.add_argument("--max-faces", type=int, default=1)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--redetect-every", type=int, default=5)
    parser.add_argument("--min-confidence", type=float, default=0.3)
    parser.add_argument("--out-csv", type=Path, default=None)
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument(
        "--out-coco", type=Path, default=None,
        help="COCO-keypoints JSON as MMPoseInferencer saves a video (per-landmark scores)",
    )  # fmt: skip
    parser.add_argument(
        "--out-openface", type=Path, default=None,
        help="OpenFace-style CSV (frame from 1, timestamp, confidence, x_0.., y_0..)",
    )  # fmt: skip
    parser.add_argument(
        "--out-video", type=Path, default=None,
        help="labelled raw | stabilised overlay: .mp4 H.264 (needs PyAV) or .avi MJPG",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _output_paths(args: argparse.Namespace) -> list[tuple[Path | None, str]]:
    """The run's outputs with their options; `landmarks.csv` when none is given. An output
    that is the input video, or another output, is refused; the overlay becomes an .avi when
    H.264 cannot be written (`overlay_path`)."""
    if args.out_video is not None:
        args.out_video = overlay_path(args.out_video)
    outputs = [(args.out_csv, "--out-csv"), (args.out_json, "--out-json"),
               (args.out_coco, "--out-coco"), (args.out_openface, "--out-openface"),
               (args.out_video, "--out-video")]  # fmt: skip
    if all(path is None for path, _ in outputs):
        args.out_csv = Path("landmarks.csv")
        outputs[0] = (args.out_csv, "--out-csv")
    source = Path(args.input)
    seen: dict[Path, str] = {}
    for path, what in outputs:
        if path is None:
            continue
        if source.exists() and path.resolve() == source.resolve():
            raise ValueError(f"{what} {path} is the input video; choose another output path")
        if path.resolve() in seen:
            raise ValueError(
                f"{what} {path} is also {seen[path.resolve()]}; give each its own path"
            )
        seen[path.resolve()] = what
    return outputs


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_ints(
        need=">= 1",
        none_allowed=True,
        **{
            "--max-frames": args.max_frames,
            "--max-faces": args.max_faces,
            "--redetect-every": args.redetect_every,
        },
    )
    check_fraction(args.min_confidence, "--min-confidence")
    check_device(args.device)
    with claim_outputs(_output_paths(args)):
        capture, _ = open_capture(args.input)
        try:
            summary = _track(args, capture)
        finally:
            capture.release()
    print(
        f"tracked {summary['frames']} frames ({summary['frames_with_face']} with a face, "
        f"{summary['skipped_frames']} corrupt frames skipped) at {summary['fps_processed']} frames/s"
    )
    return 0


def _track(args: argparse.Namespace, capture: cv2.VideoCapture) -> dict[str, Any]:
    """Load the model, track every frame into the outputs; on any failure the partial files
    (if frames were done) are kept and named, the earlier outputs are untouched."""
    fps = capture_fps(capture)
    step = load_step(
        args.checkpoint, args.backbone, args.engine, args.num_landmarks, args.device,
        allow_untrained=args.allow_untrained,
    )  # fmt: skip
    stage_file = default_stage(args.checkpoint, args.backbone)
    if stage_file is not None:
        print(f"stabiliser: shipped dlib stage ({stage_file})")
    tracker = StreamingTracker(
        step,
        make_detector(args.detector),
        max_faces=args.max_faces,
        filter=args.filter,
        fps=fps,
        redetect_every=args.redetect_every,
        min_confidence=args.min_confidence,
        device=args.device,
    )
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    outputs = TrackOutputs(
        step.num_landmarks, args.out_csv, args.out_json, args.out_video, fps, size,
        coco_path=args.out_coco, openface_path=args.out_openface,
    )  # fmt: skip
    try:
        summary = track_video(
            tracker, FrameReader(capture, args.max_frames), outputs,
            progress=not args.no_progress,
        )  # fmt: skip
        outputs.close({"source": args.input, "fps": fps, **summary})
    except BaseException:
        kept = outputs.abort()
        if kept:
            print(
                f"lightning-fa track: stopped after {outputs.frames_written} frames; what was done "
                f"is kept in {', '.join(map(str, kept))} (earlier outputs untouched)",
                file=sys.stderr,
            )
        raise
    return summary
