"""Reference scripts shipped in every exported folder as ``predict.py`` (see :mod:`transferkit.export.onnx`): each
runs with onnxruntime, numpy and Pillow (tokenizers for text) alone; they import nothing from transferkit."""
