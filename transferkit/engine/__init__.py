"""The training engine: HF Accelerate for devices, precision and processes; a short loop you can read.

``trainer.fit`` is the one epoch loop (epochs, time budget, early stopping, best weights, checkpoints and
resume); a method (``loop.Classification``, ``detection.Detection``, the contrastive strategy's pair tuning)
passes in its step, evaluation, epoch record and comparison rule.
"""
