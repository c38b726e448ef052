"""The tracking runtime: streaming face-landmark tracking on video files and cameras.

`boxes` (detector box calibration, IoU), `detectors` (Haar, dlib, `make_detector`), `blazeface`
(MediaPipe's detector, optional), `loading` (the per-frame step: checkpoint, shipped stage or
bare backbone; untrained-model checks), `shipped` (the trained dlib stage that ships with the
package), `tracker` (`StreamingTracker`, `TrackResult`), `video_io` (capture, timed frames,
overlay writers), `formats` (CSV / JSON / COCO / OpenFace outputs), `run` (`track_video`),
`options` (fraction and device checks). The command line over it is `lightning_fa.commands.track`;
the three-line API `lightning_fa.api`.
"""
