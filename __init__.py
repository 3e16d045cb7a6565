"""quweit: Quasi-Weightless Transformers - MLP blocks of pretrained ONNX models replaced by LUT networks."""

__version__ = "0.1.0"
