"""Reference scripts shipped in every exported folder as ``predict.py`` (see :mod:`transferkit.export.onnx`); they
import nothing from transferkit or torch: onnxruntime and numpy, with Pillow for images and detectors, tokenizers
for texts, soundfile and scipy for audio."""
