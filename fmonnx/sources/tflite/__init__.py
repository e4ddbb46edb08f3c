"""The TFLite source: .tflite flatbuffers to checked ONNX through tf2onnx (see convert.py)."""
