"""Training: the pure step, the one loop, the FCN job, config checks and validation.

step (TrainState, the reference optimiser, the pure train_step), loop (the loop every training runs: resume,
compile once, log, evaluate, checkpoint), job (the FCN job and train_and_evaluate), config_checks, config_flags
(absl flags parsed to one-line errors), validation (the eval split during training).
"""
