"""Keras's own layer outputs on an input tensor, for ``fmonnx compare model.h5`` (Keras against its conversion).

``KerasLayers`` loads a Keras file once (Lambda layers refused unless
``unsafe``, as in convert) and runs it eagerly on an input tensor the way the
converter's check does (``trace.recording`` + ``trace.run_eagerly``): the
model's outputs, and every layer's 4-D float output by layer path, turned to
(C, H, W) float32 from the layout Keras recorded for it (NHWC or NCHW).
TensorFlow is imported here only.
"""

from __future__ import annotations

import os

import numpy as np

from fmonnx.errors import ConversionError, ModelError
from fmonnx.sources.keras.file import choose_loader, lambda_layers, read_keras_file
from fmonnx.sources.keras.load import import_tensorflow, load_keras_model
from fmonnx.sources.keras.trace import leaves, model_io_names, recording, run_eagerly

__all__ = ["KerasLayers"]


class KerasLayers:
    """A Keras model file, loaded once; ``run(tensor)`` gives its outputs and (C, H, W) layer outputs."""

    def __init__(self, path: str | os.PathLike, unsafe: bool = False):
        keras_file = read_keras_file(path)
        lambdas = lambda_layers(keras_file.config)
        if lambdas and not unsafe:
            raise ModelError(
                f"{keras_file.path} has Lambda layers ({', '.join(lambdas)}), whose Python code is stored in the "
                "file and would run on loading; compare the converted .onnx files instead"
            )
        self.tf = import_tensorflow()
        self.model, self.loader, self.keras = load_keras_model(keras_file, choose_loader(keras_file), unsafe=unsafe)
        self.leaf_list = leaves(self.model, self.keras)
        self.output_names = model_io_names(self.model)[1]
        self.classes = {leaf.path: leaf.class_name for leaf in self.leaf_list}
        self.description = f"Keras {self.keras.__version__} ({self.loader}, TensorFlow {self.tf.__version__}, eager)"

    def run(self, tensor: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``({output name: array}, {layer path: (C, H, W) float32})`` for one input ``tensor`` (batch of one,
        the layout Keras takes: the converted model's input is the same)."""
        try:
            with recording(self.tf, self.keras, self.leaf_list) as rec:
                outputs, layers = run_eagerly(self.tf, self.model, rec, self.leaf_list, [tensor])
                layouts = dict(rec.layouts)
        except Exception as exc:  # noqa: BLE001 - running runs the model's own code; the user needs the reason
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConversionError(f"Keras could not run the model on the image: {line}") from None
        channels_first = {}
        for path, values in layers.items():
            single = np.asarray(values[0], dtype=np.float32)
            if layouts.get(path) == "NHWC":
                single = np.moveaxis(single, -1, 0)
            channels_first[path] = np.ascontiguousarray(single)
        return dict(zip(self.output_names, outputs)), channels_first
