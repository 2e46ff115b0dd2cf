"""Studies over many runs: the ablation (``ablation``), the dials study (``dials``), the refinement study
(``refinement``: CRF vs IRN masks, IRN's trunks, DeepLabV2 vs EMANet), the pooled seeds (``pool_seeds``) and
the exploration helpers of the notebook (``explore``)."""
