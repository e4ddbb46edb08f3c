"""Reverse-mode gradients written into ONNX graphs (see backward.py), one rule per op (registry.py)."""
