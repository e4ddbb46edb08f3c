"""PyTorch models as a source: ``nn.Module`` objects and ``torch.export`` files (.pt2) to checked ONNX.

torch is imported only inside this package, and only when a PyTorch model is given.
"""
