"""The tracking runtime: streaming face-landmark tracking on video files and cameras.

`detectors` (face boxes), `loading` (the per-frame step: checkpoint, shipped stage or bare
backbone), `tracker` (`StreamingTracker`, `TrackResult`, `track_video`), `video_io` (capture,
timed frames, overlay writers), `formats` (CSV / JSON / COCO / OpenFace outputs), `shipped` (the
trained dlib stage that ships with the package), `blazeface` (MediaPipe's detector, optional).
The command line over it is `lightning_fa.commands.track`; the three-line API `lightning_fa.api`.
"""
