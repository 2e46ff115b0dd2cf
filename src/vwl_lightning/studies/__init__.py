"""Studies over many runs: the ablation (``ablation``) and the exploration helpers of the notebook
(``explore``)."""
