"""The pipeline's stages, each the unit DVC runs and records (`python -m ssl_pipeline <stage>`).

A stage module is thin: it reads params, calls the training core and the ingest/tracking edges,
and writes its outputs (ssl_pipeline/outputs.py). Nothing outside this package imports a stage
module; the CLI finds them by name.
"""
STAGES = {
    "prepare": "decode + validate new images into the sharded uint8 cache, manifest and stable splits",
    "pretrain": "self-supervised pretraining of the encoder",
    "finetune": "linear probe / fine-tune / scratch at every label fraction",
    "evaluate": "test accuracy table, plots, headline metrics",
}
STAGE_NAMES = tuple(STAGES)
