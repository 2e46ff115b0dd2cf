"""A finished run on your own images, outside the pipeline: segmenter masks or classifier CAMs (``predict``,
CLI ``python -m vwl_lightning.predict``) and TorchScript / ONNX export (``export``, CLI
``python -m vwl_lightning.export``)."""
