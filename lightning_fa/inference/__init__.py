"""Inference: the per-frame step written once and the ways it runs.

step.py       FrameStep: backbone -> temporal stage -> decode for one frame of B streams
state.py      flat state tensors; the one gather / scatter of many streams' state rows
streaming.py  MultiStreamInference (many streams, one batch) and compile_step
onnx.py       StreamingStep (flat state, scores), export_onnx, OnnxStep (onnxruntime)
"""
