"""Training: the DCGAN networks, data, objectives and the training loop (`python -m training.run`)."""
