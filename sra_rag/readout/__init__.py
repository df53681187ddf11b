"""Which documents the model read: the recorder the attention function fills during a prefill
(:mod:`~sra_rag.readout.recorder`) and the calibration profiles that score it
(:mod:`~sra_rag.readout.calibration`)."""
