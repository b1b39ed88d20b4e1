"""Engine: devices, checkpoints, atomic artefacts, the training loop and distribution."""
