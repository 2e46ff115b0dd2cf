"""CAMs: multi-scale + flip fusion (``fusion``), the CAM file format (``files``), the inference inputs
(``inputs``) and the predict-loop writer (``writer``). Spec §5."""
